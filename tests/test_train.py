"""Training: train.py end to end, data parallelism, schedules, checkpoints, config errors."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flax_resnet import create_model, optim
from flax_resnet.parallel import DataParallel, initialize_distributed
from flax_resnet.parallel import AXIS
from flax_resnet.step import StepSettings, create_train_state, eval_step, train_step
from train_utils import ROOT, records, run_train

QUICK = ["--config.num_train_steps=24", "--config.log_every_steps=8",
         "--config.eval_every_steps=12", "--config.checkpoint_every_steps=12",
         "--config.batch_size=64", "--config.eval_batch_size=1000", "--config.eval_flip=False"]


def test_train_py_end_to_end_and_resume(tmp_path, fashion_mnist_data_dir):
  workdir = tmp_path / "run"
  first = run_train(workdir, fashion_mnist_data_dir, *QUICK)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "starting afresh" in first.stdout
  assert "step 24/24" in first.stdout and "img/s" in first.stdout and "ETA" in first.stdout
  lines = records(workdir)
  assert [r["step"] for r in lines if "train_loss" in r] == [8, 16, 24]
  evals = [r for r in lines if "eval_accuracy" in r]
  assert [r["step"] for r in evals] == [12, 24]
  assert all(r["eval_examples"] == 10_000 for r in evals)  # the whole test split, once
  assert all(0 <= r["eval_accuracy"] <= r["eval_top5_accuracy"] <= 1 for r in evals)
  assert all("learning_rate" in r for r in lines if "train_loss" in r)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "24"]
  assert (workdir / "curves.png").stat().st_size > 10_000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  # Again with a longer schedule on the same workdir: resumes at 24, not from scratch.
  # Its evaluations on the test split's first 2,000 images (config.eval_examples).
  longer = [f for f in QUICK if "num_train_steps" not in f] + [
      "--config.num_train_steps=36", "--config.eval_examples=2000"]
  second = run_train(workdir, fashion_mnist_data_dir, *longer)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming at step 24" in second.stdout
  steps = [r["step"] for r in records(workdir) if "train_loss" in r]
  assert steps == [8, 16, 24, 32, 36]
  assert [r["eval_examples"] for r in records(workdir) if "eval_accuracy" in r] == [
      10_000, 10_000, 2_000]
  assert "36" in os.listdir(workdir / "checkpoints")

  # Once more on the finished workdir, scoring the test images with their mirrors: no
  # training, one evaluation of the last checkpoint, metrics and checkpoints unchanged.
  before = (workdir / "metrics.jsonl").read_text(), sorted(os.listdir(workdir / "checkpoints"))
  third = run_train(workdir, fashion_mnist_data_dir, *longer, "--config.eval_flip=True")
  assert third.returncode == 0, third.stderr[-3000:]
  assert "already trained to step 36 of 36; evaluating it" in third.stdout
  assert "step 36: eval accuracy" in third.stdout and "final: eval accuracy" in third.stdout
  assert "img/s" not in third.stdout
  assert ((workdir / "metrics.jsonl").read_text(),
          sorted(os.listdir(workdir / "checkpoints"))) == before


def test_bad_config_is_one_message_without_traceback(tmp_path, fashion_mnist_data_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("untouched")
  result = run_train(workdir, fashion_mnist_data_dir, "--config.batch_size=100")
  assert result.returncode == 1
  assert "error: config.batch_size=100 does not divide over the 8 devices" in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(workdir)) == ["keep.txt"]


@pytest.mark.parametrize("flags,message", [
    (["--config=configs/nonexistent.py"], "--config=configs/nonexistent.py: no such config file"),
    (["--config.image_siz=3"], "'image_siz' Did you mean \"image_size\""),
    (["--config.image_size=abc"], "flag --config.image_size=abc: invalid literal"),
])
def test_bad_command_line_is_one_message(tmp_path, flags, message):
  """Mistakes on train.py's command line: one line, nothing written."""
  workdir = tmp_path / "run"
  command = [sys.executable, "train.py", "--config=configs/fashion_mnist.py",
             f"--workdir={workdir}", *flags]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not workdir.exists()


def test_a_bug_keeps_its_traceback(tmp_path):
  """Only the project's own error types print one line; a ValueError from inside JAX, Flax or
  orbax is a bug until shown otherwise and shows its traceback."""
  from flax_resnet.errors import USER_ERRORS, CheckpointError, ConfigError, DataError
  assert all(isinstance(e("x"), USER_ERRORS) for e in (ConfigError, DataError, CheckpointError))
  with pytest.raises(ValueError) as raised:
    jnp.linspace(0.0, 1.0, -1)  # a ValueError from inside JAX
  assert not isinstance(raised.value, USER_ERRORS)
  code = ("import runpy, sys; import flax_resnet.loop as loop\n"
          "def broken(config, workdir): raise ValueError('a bug inside a library')\n"
          "loop.train_and_evaluate = broken\n"
          f"sys.argv = ['train.py', '--config=configs/fashion_mnist.py', '--workdir={tmp_path}']\n"
          "runpy.run_path('train.py', run_name='__main__')")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "ValueError: a bug inside a library" in result.stderr


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 100, "does not divide over the 8 devices"),
    ("eval_batch_size", 12, "eval_batch_size=12 does not divide"),
    ("model", "resnet51", "unknown model 'resnet51'"),
    ("dataset", "mnist", "unknown dataset 'mnist'"),
    ("lr_schedule", "linear", "lr_schedule"),
    ("num_epochs", 0, "num_epochs or config.num_train_steps"),
    ("crop_padding", -2, "crop_padding must be >= 0"),
    ("widths", (32, 64), "must be 3 positive integers"),
    ("random_erasing", 1.5, "random_erasing must be a probability"),
    ("eval_examples", -1, "eval_examples must be >= 0"),
    ("image_size", -1, "image_size must be a number of pixels, >= 0"),
    ("learning_rate", -1.0, "learning_rate must be positive, not -1.0"),
    ("momentum", 1.5, "momentum must be in \\[0, 1\\)"),
])
def test_bad_config_leaves_workdir_untouched(tmp_path, fashion_mnist_data_dir, field, value,
                                             message):
  from configs import fashion_mnist
  from flax_resnet import train_and_evaluate
  config = fashion_mnist.get_config()
  config.data_dir = fashion_mnist_data_dir
  config[field] = value
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("untouched")
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ["keep.txt"]


# --- the data-parallel step -----------------------------------------------------------------

def _setup(batch_size=16):
  config = default.get_config()
  config.batch_size = batch_size
  config.lr_reference_batch_size = 0
  lr = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr)
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), axis_name=AXIS)
  state = create_train_state(model, tx, (16, 16, 3), jax.random.key(0))
  settings = StepSettings(model=model, num_classes=10, tx=tx, learning_rate_fn=lr)
  step = functools.partial(train_step, settings=settings)
  rng = np.random.default_rng(0)
  batches = [dict(image=rng.normal(size=(batch_size, 16, 16, 3)).astype(np.float32),
                  label=rng.integers(0, 10, batch_size).astype(np.int32)) for _ in range(3)]
  return state, step, batches


def _train(mode, devices, state, step, batches):
  parallel = DataParallel(mode, devices)
  mapped = parallel.map_step(step)
  state = parallel.put_state(state)
  for batch in batches:
    state, metrics = mapped(state, parallel.put_batch(batch))
  return jax.device_get(parallel.get_state(state)), parallel.get_metrics(metrics)


def test_initialize_distributed_joins_only_when_asked_or_in_a_cluster(monkeypatch):
  """A laptop run never starts jax.distributed; explicit arguments or a cluster's own
  environment (SLURM, Open MPI, Cloud TPU pods) do."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  for name in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  initialize_distributed()
  initialize_distributed(None, 1)
  assert calls == []
  initialize_distributed("localhost:1234", 2, 1)
  initialize_distributed(None, 2, 0)
  assert calls == [("localhost:1234", 2, 1), (None, 2, 0)]
  monkeypatch.setenv("SLURM_NTASKS", "4")
  initialize_distributed()
  assert calls[-1] == ()


def test_eight_devices_equal_one_device_bn_statistics_included():
  state, step, batches = _setup()
  one, m1 = _train("shard_map", jax.devices()[:1], state, step, batches)
  eight, m8 = _train("shard_map", jax.devices(), state, step, batches)
  assert int(eight.step) == 3
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
  jax.tree.map(close, eight.params, one.params)
  jax.tree.map(close, eight.batch_stats, one.batch_stats)
  close(m8["train_loss"], m1["train_loss"])
  # and training moved the parameters at all
  assert not np.allclose(one.params["fc"]["kernel"], state.params["fc"]["kernel"])


def test_pmap_and_shard_map_give_the_same_step():
  state, step, batches = _setup()
  a, _ = _train("shard_map", jax.devices(), state, step, batches)
  b, _ = _train("pmap", jax.devices(), state, step, batches)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, a.params, b.params)
  jax.tree.map(close, a.batch_stats, b.batch_stats)
  jax.tree.map(close, a.opt_state, b.opt_state)


def test_eval_step_scores_views_by_their_mean_logits():
  """An image and its mirror as two views: the sums are those of the averaged logits, over
  the real (mask 1) examples only, whatever the number of devices."""
  state, _, batches = _setup()
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), axis_name=AXIS)
  images = batches[0]["image"]
  labels = np.arange(16, dtype=np.int32) % 10
  mask = np.ones(16, np.float32)
  mask[-3:] = 0
  views = {"image": np.stack([images, images[:, :, ::-1]], axis=1), "label": labels,
           "mask": mask}
  parallel = DataParallel("shard_map", jax.devices())
  settings = StepSettings(model=model, num_classes=10)
  p_eval = parallel.map_eval(functools.partial(eval_step, settings=settings))
  sums = parallel.get_metrics(p_eval(parallel.put_state(state), parallel.put_batch(views)))

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  apply = functools.partial(model.clone(axis_name=None).apply, variables, train=False)
  logits = (apply(images) + apply(images[:, :, ::-1])) / 2
  real = mask == 1
  assert float(sums["count"]) == 13
  assert float(sums["top1"]) == np.sum(np.argmax(logits, -1)[real] == labels[real])
  top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
  assert float(sums["top5"]) == np.sum((top5 == labels[:, None]).any(-1)[real])
  losses = -jax.nn.log_softmax(logits)[np.arange(16), labels]
  np.testing.assert_allclose(float(sums["loss"]), np.sum(losses[real]), rtol=1e-5)


# --- schedules and weight decay -------------------------------------------------------------

def test_paper_step_schedule_and_linear_scaling():
  config = default.get_config()
  config.batch_size = 1024
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=100, num_train_steps=9000)
  assert lr(0) == pytest.approx(0.4)              # 0.1 x 1024 / 256
  assert lr(2999) == pytest.approx(0.4)
  assert lr(3000) == pytest.approx(0.04)          # epoch 30
  assert lr(6000) == pytest.approx(0.004)         # epoch 60


def test_cifar_resnet110_constant_warmup_then_steps():
  from configs import cifar_resnet110
  config = cifar_resnet110.get_config()
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=390, num_train_steps=64_000)
  assert lr(0) == pytest.approx(0.01) and lr(399) == pytest.approx(0.01)
  assert lr(400) == pytest.approx(0.1)
  assert lr(31_999) == pytest.approx(0.1)
  assert lr(32_000) == pytest.approx(0.01)
  assert lr(48_000) == pytest.approx(0.001)


def test_cosine_with_linear_warmup():
  config = default.get_config()
  config.lr_schedule, config.warmup_epochs, config.batch_size = "cosine", 5, 256
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=10, num_train_steps=100)
  assert lr(0) == 0 and lr(25) == pytest.approx(0.05)
  assert lr(50) == pytest.approx(0.1)
  assert lr(100) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_only_on_kernels_by_default():
  params = {"conv": {"kernel": jnp.ones(2)}, "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
            "fc": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
  mask = optim.weight_decay_mask(params, "kernels")
  assert mask == {"conv": {"kernel": True}, "bn": {"scale": False, "bias": False},
                  "fc": {"kernel": True, "bias": False}}
  assert all(jax.tree.leaves(optim.weight_decay_mask(params, "all")))


def test_plot_overlay_command(tmp_path):
  for name, acc in (("plain", 0.8), ("resnet", 0.9)):
    d = tmp_path / name
    d.mkdir()
    with open(d / "metrics.jsonl", "w") as f:
      for step in (10, 20):
        f.write(json.dumps({"step": step, "train_loss": 1.0 / step, "train_accuracy": acc,
                            "learning_rate": 0.1}) + "\n")
        f.write(json.dumps({"step": step, "eval_loss": 2.0 / step, "eval_accuracy": acc}) + "\n")
  out = tmp_path / "cmp.png"
  result = subprocess.run([sys.executable, "-m", "flax_resnet.plotting", str(tmp_path / "plain"),
                           str(tmp_path / "resnet"), f"--out={out}"], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert out.stat().st_size > 10_000


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_step(dtype):
  """bfloat16 compute, or float16 with dynamic loss scaling: an overflowing step is skipped
  and the scale halves; a normal step trains and keeps float32 parameters."""
  from flax_resnet.loop import build_model
  config = default.get_config()
  config.update(dict(model="cifar_resnet20", batch_size=16, lr_reference_batch_size=0,
                     half_precision=True, half_precision_dtype=dtype))
  lr = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr)
  model = build_model(config, num_classes=10)
  state = create_train_state(model, tx, (16, 16, 3), jax.random.key(0),
                             use_loss_scaling=dtype == "float16")
  settings = StepSettings(model=model, num_classes=10, tx=tx, learning_rate_fn=lr)
  step = functools.partial(train_step, settings=settings)
  parallel = DataParallel("shard_map", jax.devices()[:2])
  mapped = parallel.map_step(step, donate_state=False)
  rng = np.random.default_rng(0)
  batch = dict(image=rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
               label=rng.integers(0, 10, 16).astype(np.int32))
  live = parallel.put_state(state)
  after, metrics = mapped(live, parallel.put_batch(batch))
  after = jax.device_get(after)
  assert np.isfinite(parallel.get_metrics(metrics)["train_loss"])
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(after.params))
  assert not np.allclose(after.params["fc"]["kernel"], state.params["fc"]["kernel"])
  if dtype == "float16":
    # a loss scale so large that float16 gradients overflow: the step must change nothing
    huge = live.replace(dynamic_scale=live.dynamic_scale.replace(scale=jnp.float32(2.0**60)))
    skipped, _ = mapped(huge, parallel.put_batch(batch))
    skipped = jax.device_get(skipped)
    jax.tree.map(np.testing.assert_array_equal, skipped.params, state.params)
    assert float(skipped.dynamic_scale.scale) == 2.0**59


def test_train_and_evaluate_from_a_notebook_outside_the_repository(tmp_path,
                                                                  fashion_mnist_data_dir):
  """The README's notebook use: the packaged default config plus a few overrides, from any
  directory (no configs/ on the path), after the package is installed."""
  code = f"""
import os, sys
assert not os.path.exists("configs")
import flax_resnet
config = flax_resnet.default_config()
config.update(model="cifar_resnet20", shortcut="A", dataset="fashion_mnist", batch_size=64,
              num_train_steps=4, log_every_steps=2, eval_examples=500, plot=False,
              data_dir={fashion_mnist_data_dir!r}, widths=(8, 16, 16))
result = flax_resnet.train_and_evaluate(config, "run")
print("RESULT", result["steps"], result["eval_examples"], 0 <= result["eval_accuracy"] <= 1)
"""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "RESULT 4 500 True" in result.stdout
  assert (tmp_path / "run" / "metrics.jsonl").exists()
