"""Training: train.py end to end and its errors, schedules and weight decay, the loop from a
notebook."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flax_resnet import optim
from train_utils import ROOT, records, run_train

QUICK = ["--config.num_train_steps=24", "--config.log_every_steps=8",
         "--config.eval_every_steps=12", "--config.checkpoint_every_steps=12",
         "--config.batch_size=64", "--config.eval_batch_size=1000", "--config.eval_flip=False"]


@pytest.mark.slow
def test_train_py_end_to_end_and_resume(tmp_path, fashion_mnist_data_dir):
  workdir = tmp_path / "run"
  first = run_train(workdir, fashion_mnist_data_dir, *QUICK)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "starting afresh" in first.stdout
  assert "step 24/24" in first.stdout and "img/s" in first.stdout and "ETA" in first.stdout
  lines = records(workdir)
  # a record at each log line (8) and at each evaluation and checkpoint (12): no step is lost
  assert [r["step"] for r in lines if "train_loss" in r] == [8, 12, 16, 24]
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
  assert steps == [8, 12, 16, 24, 32, 36]
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


@pytest.mark.slow
def test_bad_config_is_one_message_without_traceback(tmp_path, fashion_mnist_data_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("untouched")
  result = run_train(workdir, fashion_mnist_data_dir, "--config.batch_size=100")
  assert result.returncode == 1
  assert "error: config.batch_size=100 does not divide over the 8 devices" in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(workdir)) == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("flags,message", [
    (["--config=configs/nonexistent.py"], "--config=configs/nonexistent.py: no such config file"),
    (["--config.image_siz=3"], "'image_siz' Did you mean \"image_size\""),
    (["--config.image_size=abc"], "flag --config.image_size=abc: invalid literal"),
    (["--config=configs/fashion_mnist_tricks.py:emma"],
     "--config=configs/fashion_mnist_tricks.py:emma: unknown variant 'emma'; the variants are "
     "ema, mixup"),
    (["--config=configs/fashion_mnist_short.py:foo"],
     "--config=configs/fashion_mnist_short.py:foo: configs/fashion_mnist_short.py takes no "
     "variant ':foo'"),
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


@pytest.mark.slow
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
    ("image_size", -1, "image_size must be a number of pixels in \\[0, 4096\\]"),
    ("learning_rate", -1.0, "learning_rate must be in \\(0, 100\\], not -1.0"),
    ("momentum", 1.5, "momentum must be in \\[0, 1\\)"),
])
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
