"""The first steps of the nets whose identity shortcuts blew up in round one, logged every
step: round one's recipe, then one change at a time, and the same nets in PyTorch.

    python reproduce/first_steps.py --out=reproduce/first_steps \
        [--runs=resnet18_A,resnet34_A,cifar_resnet56] [--variants=round_one,...] [--steps=300]

Each run trains `configs/reproduce_round_one.py:NAME` from its seed's initial weights on the
batches train.py would feed it (its data pipeline, augmentation included) and writes
OUT/NAME/VARIANT.json: the training loss and accuracy of every step. Variants:

  round_one    round one's recipe and initial weights: the classifier as Flax's Dense
               default (lecun-normal kernel, zero bias), as round one ran
  paper_lr     ... with the paper's ImageNet learning rate per image, 0.1 per 256 (ImageNet-
               style nets only: the depth study's 0.1 per 128 is the paper's CIFAR rate)
  wd_all       ... with weight decay on every parameter (the paper's, fb.resnet.torch's)
  torch_init   ... with the classifier as torchvision's (the library's default now)
  zero_init    ... with each block's last BatchNorm scale starting at 0 (Goyal et al.)
  pytorch      round_one's weights, recipe and batches, trained by torch.optim.SGD on the
               PyTorch twin (reproduce/torch_twin.py); needs torch

`--report` prints the table of mean losses over steps 1-25, 26-50, 51-100 and 101-300 of
the runs done, and each run's highest loss of one step.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = ("resnet18_A", "resnet34_A", "cifar_resnet56")
VARIANTS = ("round_one", "paper_lr", "wd_all", "torch_init", "zero_init", "pytorch")
WINDOWS = ((1, 25), (26, 50), (51, 100), (101, 300))


def variant_config(run: str, variant: str):
  from configs import reproduce_round_one
  config = reproduce_round_one.get_config(run)
  if variant == "paper_lr":
    config.lr_reference_batch_size = 256
  elif variant == "wd_all":
    config.weight_decay_on = "all"
  elif variant == "zero_init":
    config.zero_init_residual = True
  return config


def applies(run: str, variant: str) -> bool:
  return not (variant == "paper_lr" and run.startswith("cifar_"))


def flax_classifier(variables, seed: int):
  """`variables` with the classifier re-drawn as Flax's Dense default (round one's)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  fc = variables["params"]["fc"]
  kernel = nn.initializers.lecun_normal()(jax.random.key(seed), fc["kernel"].shape)
  params = {**variables["params"], "fc": {"kernel": kernel, "bias": jnp.zeros_like(fc["bias"])}}
  return {**variables, "params": params}


def train(run: str, variant: str, steps: int) -> dict:
  import numpy as np

  from flax_resnet.data import pipeline
  from flax_resnet.plan import plan_run
  from reproduce.side_by_side import OurTrainer

  config = variant_config(run, "round_one" if variant == "pytorch" else variant)
  plan = plan_run(config)
  shape = plan.info.image_shape
  ours = OurTrainer(config, plan.num_classes, shape, plan.num_train_steps, plan.steps_per_epoch)
  initial = ours.variables
  if variant != "torch_init":
    initial = flax_classifier(initial, config.seed)
    ours.restart_from(initial)
  batches = pipeline.create_train_iterator(config)
  log = {"run": run, "variant": variant, "loss": [], "accuracy": [], "learning_rate": []}
  start = time.time()
  if variant == "pytorch":
    batch_list = [next(batches) for _ in range(steps)]
    lrs = [float(ours.learning_rate_fn(step)) for step in range(steps)]
    log["loss"] = replay_in_pytorch(ours.model, initial, config, batch_list, lrs)
    log["accuracy"], log["learning_rate"] = [None] * steps, lrs
  else:
    for step in range(steps):
      batch = next(batches)
      metrics = ours.step(batch["image"], batch["label"])
      log["loss"].append(metrics["train_loss"])
      log["accuracy"].append(metrics["train_accuracy"])
      log["learning_rate"].append(float(ours.learning_rate_fn(step)))
  log["seconds"] = round(time.time() - start, 1)
  log["loss"] = [x if x is not None and np.isfinite(x) else None for x in log["loss"]]
  log["accuracy"] = [x if x is not None and np.isfinite(x) else None for x in log["accuracy"]]
  return log


def replay_in_pytorch(model, initial, config, batch_list, lrs) -> list[float]:
  """The losses of the PyTorch twin of `model` trained from `initial` on `batch_list` at the
  learning rates `lrs`, in a process of its own (PyTorch and TensorFlow in one process crash)."""
  import subprocess
  import tempfile

  import numpy as np
  from flax import traverse_util
  with tempfile.TemporaryDirectory() as tmp:
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(initial).items()}
    np.savez(f"{tmp}/replay.npz", images=np.stack([b["image"] for b in batch_list]),
             labels=np.stack([b["label"] for b in batch_list]), lrs=np.asarray(lrs), **flat)
    spec = dict(stage_sizes=list(model.stage_sizes), widths=list(model.widths), stem=model.stem,
                option=model.shortcut, residual=model.block_cls.residual,
                num_classes=model.num_classes, momentum=config.momentum,
                weight_decay=config.weight_decay, decay=config.weight_decay_on)
    subprocess.run([sys.executable, __file__, f"--replay={tmp}/replay.npz",
                    f"--spec={json.dumps(spec)}"], check=True)
    return json.loads(pathlib.Path(f"{tmp}/replay.npz.losses.json").read_text())


def replay(path: str, spec: dict) -> None:
  """The PyTorch side of `replay_in_pytorch` (imports no TensorFlow)."""
  import numpy as np
  import torch
  from flax import traverse_util

  from reproduce import torch_twin
  torch.set_num_threads(os.cpu_count() or 1)
  data = np.load(path)
  initial = traverse_util.unflatten_dict(
      {tuple(k.split("/")): data[k] for k in data.files if "/" in k})
  module = torch_twin.TorchResNet(spec["stage_sizes"], spec["widths"], spec["stem"],
                                  spec["option"], spec["residual"], spec["num_classes"],
                                  in_channels=data["images"].shape[-1])
  torch_twin.load_variables(module, initial)
  optimizer = torch_twin.paper_sgd(module, 0.0, spec["momentum"], spec["weight_decay"],
                                   spec["decay"])
  losses = [torch_twin.torch_step(module, optimizer, images, labels, lr=float(lr))
            for images, labels, lr in zip(data["images"], data["labels"], data["lrs"])]
  pathlib.Path(path + ".losses.json").write_text(json.dumps(losses))


def window_means(losses) -> list[float | None]:
  out = []
  for lo, hi in WINDOWS:
    part = [x for x in losses[lo - 1:hi] if x is not None]
    out.append(sum(part) / len(part) if len(part) == len(losses[lo - 1:hi]) and part else None)
  return out


def report(out: pathlib.Path) -> str:
  """The table of the runs in OUT: mean loss per window of steps, and the highest loss of
  one step with its step."""
  header = ("| net | variant | " + " | ".join(f"steps {lo}-{hi}" for lo, hi in WINDOWS) +
            " | highest (step) |\n|---|---|" + "---|" * (len(WINDOWS) + 1))
  rows = []
  for run in RUNS:
    for variant in VARIANTS:
      path = out / run / f"{variant}.json"
      if not path.exists():
        continue
      losses = json.loads(path.read_text())["loss"]
      means = window_means(losses)
      cells = " | ".join("diverged" if m is None else f"{m:.2f}" for m in means)
      finite = [(x, i + 1) for i, x in enumerate(losses) if x is not None]
      highest, at = max(finite)
      rows.append(f"| {run} | {variant} | {cells} | {highest:.1f} ({at}) |")
  return "\n".join([header, *rows])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(ROOT / "reproduce" / "first_steps"))
  p.add_argument("--runs", default=",".join(RUNS))
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--report", action="store_true", help="print the table of what is done")
  p.add_argument("--replay", help=argparse.SUPPRESS)  # the PyTorch side, in its own process
  p.add_argument("--spec", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.replay:
    replay(args.replay, json.loads(args.spec))
    return
  out = pathlib.Path(args.out)
  if args.report:
    print(report(out))
    return
  from flax_resnet import cpu
  cpu.configure_cpu()
  for run in args.runs.split(","):
    for variant in args.variants.split(","):
      path = out / run / f"{variant}.json"
      if path.exists() or not applies(run, variant):
        continue
      log = train(run, variant, args.steps)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(log) + "\n")
      means = ", ".join("-" if m is None else f"{m:.2f}" for m in window_means(log["loss"]))
      print(f"{run} {variant}: mean loss {means} ({log['seconds']} s)", flush=True)


if __name__ == "__main__":
  main()
