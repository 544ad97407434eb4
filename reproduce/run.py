"""Runs the paper's Section 4 studies on Fashion-MNIST and writes their evidence.

    python reproduce/run.py --workdir=DIR [--only=depth|imagenet_style|NAME,...] [--report_only]
        [--data_dir=TFDS_DIR] [--flag=--config.FIELD=VALUE ...]

Each run of `configs/reproduce.py` trains with `train.py` in DIR/NAME: a finished run is
skipped, an interrupted one resumes from its newest checkpoint (train.py resumes by itself),
so the command can be stopped and started again at any time. Run it from a frozen copy of the
source (`git worktree add`), so that later commits cannot change a run halfway.

Then, for every finished run, it writes into --out (default: this folder):
  runs/NAME/metrics.jsonl   the run's metrics
  results.json              {"runs": [{name, model, shortcut, image_size, steps, train_error,
                             test_error, params, mean_layer_response, layer_responses,
                             initial_logit_std, initial_loss, initial_kernel_norm,
                             final_kernel_norm, wall_seconds, machine}]}
  figures/*.png             training error (thin, dashed) and test error (bold, solid) against
                            iterations, as in the paper's Figures 4 and 6, and the layer
                            responses (Fig. 7); `python reproduce/figures.py` redraws them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import reproduce as studies  # noqa: E402

RESPONSE_IMAGES = 1000  # test images the layer responses are measured on


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="one work directory per run goes here")
  p.add_argument("--only", default="", help="'depth', 'imagenet_style' or run names, "
                 "comma-separated (default: every run)")
  p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                 help="where runs/, results.json and figures/ go")
  p.add_argument("--data_dir", default=None, help="TFDS data_dir (default: TFDS's own)")
  p.add_argument("--report_only", action="store_true", help="train nothing; report what is done")
  p.add_argument("--flag", action="append", default=[],
                 help="an extra train.py flag for every run, e.g. --flag=--config.num_train_steps=8")
  return p.parse_args(argv)


def selected_runs(only: str) -> list[str]:
  """The runs of a study ('depth', 'imagenet_style'), or named runs: any net of
  configs/reproduce.py, with -seedS for another seed."""
  if not only:
    return list(studies.RUNS)
  names = []
  for part in only.split(","):
    part = part.strip()
    group = {"depth": studies.DEPTH_RUNS, "imagenet_style": studies.IMAGENET_STYLE_RUNS}
    if part in group:
      names += group[part]
      continue
    try:
      studies.parse_run(part)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    names.append(part)
  return names


def machine() -> str:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{model}, {os.cpu_count()} cores"


def _read_json(path, default):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default


def _records(run_dir):
  from flax_resnet.reporting import read_metrics
  return read_metrics(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else []


def steps_weighted_mean(records, key: str, after: int) -> float:
  """The mean of `key` over the steps after `after`, each record weighted by the steps it
  covers: a record holds the mean of the steps since the record before it (a log line, or
  the steps flushed at an evaluation or a checkpoint), so records cover unequal spans."""
  total = weight = 0.0
  previous = 0
  for r in sorted((r for r in records if key in r), key=lambda r: r["step"]):
    covered = r["step"] - max(previous, after)
    if covered > 0:
      total += covered * r[key]
      weight += covered
    previous = r["step"]
  if not weight:
    raise ValueError(f"no record of {key} after step {after}")
  return total / weight


def is_finished(run_dir: str) -> bool:
  return bool(_read_json(os.path.join(run_dir, "run.json"), {}).get("finished"))


def train(name: str, run_dir: str, flags: list[str]) -> None:
  """train.py for one run, resuming where it stopped; its wall time adds up in run.json."""
  os.makedirs(run_dir, exist_ok=True)
  command = [sys.executable, "train.py", f"--config=configs/reproduce.py:{name}",
             f"--workdir={run_dir}", *flags]
  print(f"== {name}: {' '.join(command[1:])}", flush=True)
  start = time.time()
  with open(os.path.join(run_dir, "train.log"), "a") as log:
    result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  info = _read_json(os.path.join(run_dir, "run.json"), {"wall_seconds": 0.0})
  info["wall_seconds"] += time.time() - start
  info["machine"] = machine()
  info["finished"] = result.returncode == 0 and "final:" in _last_line(run_dir)
  with open(os.path.join(run_dir, "run.json"), "w") as f:
    json.dump(info, f)
  if result.returncode:
    raise SystemExit(f"error: {name} failed; see {os.path.join(run_dir, 'train.log')}")


def _last_line(run_dir: str) -> str:
  with open(os.path.join(run_dir, "train.log")) as f:
    lines = [l for l in f if l.strip()]
  return lines[-1] if lines else ""


def summarize(name: str, run_dir: str, data_dir: str | None) -> dict:
  """One row of results.json from a finished run's metrics and final checkpoint, with the
  analyses that explain it: layer responses (Fig. 7) on RESPONSE_IMAGES test images; the
  first step's logit scale and loss, from the run's own initial weights (its model and seed)
  on one batch of test images; the convolution kernels' global norm at the start and the end."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax_resnet import count_params, create_model, loop
  from flax_resnet.analysis import kernel_norm, layer_responses, output_scale
  from flax_resnet.checkpointing import read_state
  from flax_resnet.config import model_fields
  from flax_resnet.data import catalog, datasets, pipeline
  from flax_resnet.step import create_train_state

  config = studies.get_config(name)
  config.data_dir = data_dir
  records = _records(run_dir)
  steps = max(r["step"] for r in records)
  epoch = datasets.steps_per_epoch(config, process_count=1)
  final_eval = [r for r in records if "eval_accuracy" in r][-1]
  size = catalog.image_size(config)
  model = create_model(config.model, num_classes=10, **model_fields(config))
  state = read_state(os.path.join(run_dir, "checkpoints"))
  config.eval_examples, config.eval_flip = RESPONSE_IMAGES, False
  batches = list(pipeline.create_eval_iterator(config, process_index=0, process_count=1))
  images = np.concatenate([b["image"] for b in batches])[:RESPONSE_IMAGES]
  labels = np.concatenate([b["label"] for b in batches])[:RESPONSE_IMAGES]
  responses = layer_responses(model, {"params": state["params"],
                                      "batch_stats": state["batch_stats"]}, jnp.asarray(images))
  # The weights the run started from: train.py's model and initialization, with config.seed.
  run_model = loop.build_model(config, num_classes=10)
  start = create_train_state(run_model, optax.identity(), (size, size, 1),
                             jax.random.key(config.seed))
  initial = {"params": start.params, "batch_stats": start.batch_stats}
  first_step = output_scale(run_model, initial, images[:config.batch_size],
                            labels[:config.batch_size])
  info = _read_json(os.path.join(run_dir, "run.json"), {})
  return {"name": name, "model": config.model, "seed": config.seed,
          "shortcut": None if config.model.startswith(("plain", "cifar_plain")) else model.shortcut,
          "image_size": size, "steps": steps,
          "train_error": 1 - steps_weighted_mean(records, "train_accuracy", steps - epoch),
          "test_error": 1 - final_eval["eval_accuracy"],
          "params": count_params(model, (1, size, size, 1)),
          "mean_layer_response": float(np.mean(responses)),
          "layer_responses": [round(float(s), 5) for s in responses],
          "initial_logit_std": round(first_step["logit_std"], 4),
          "initial_loss": round(first_step["loss"], 4),
          "initial_kernel_norm": round(kernel_norm(initial["params"]), 4),
          "final_kernel_norm": round(kernel_norm(state["params"]), 4),
          "wall_seconds": round(info.get("wall_seconds", 0.0)), "machine": info.get("machine")}


def main(argv=None):
  args = parse_args(argv)
  names = selected_runs(args.only)
  if not args.report_only:
    for name in names:
      run_dir = os.path.join(args.workdir, name)
      if is_finished(run_dir):
        print(f"== {name}: finished, skipped", flush=True)
        continue
      data_flag = [f"--config.data_dir={args.data_dir}"] if args.data_dir else []
      train(name, run_dir, data_flag + args.flag)
  done = [n for n in dict.fromkeys(list(studies.RUNS) + names)
          if is_finished(os.path.join(args.workdir, n))]
  rows = []
  for name in done:
    run_dir = os.path.join(args.workdir, name)
    target = os.path.join(args.out, "runs", name)
    os.makedirs(target, exist_ok=True)
    shutil.copyfile(os.path.join(run_dir, "metrics.jsonl"), os.path.join(target, "metrics.jsonl"))
    rows.append(summarize(name, run_dir, args.data_dir))
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"runs": rows}, f, indent=1)
  from reproduce import figures
  written = figures.draw_all(rows, os.path.join(args.out, "runs"),
                             os.path.join(args.out, "figures"))
  print(f"{len(rows)} finished runs reported in {args.out}: results.json, "
        f"{', '.join(os.path.basename(w) for w in written) or 'no figures yet'}")


if __name__ == "__main__":
  main()
