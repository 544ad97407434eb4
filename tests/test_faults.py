"""Faults met inside one run, through `train_and_evaluate` in this process (no train.py): no
completed step's metrics are lost, a failed checkpoint save stops the run with one error
and leaves no thread behind, a workdir belongs to one run at a time."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

import flax_resnet
from train_utils import ROOT, records, train_env


def tiny_config(data_dir, **overrides):
  """Fashion-MNIST on a 4-wide CIFAR ResNet-20: a few steps take seconds."""
  config = flax_resnet.default_config()
  config.update(dict(model="cifar_resnet20", widths=(4, 4, 4), dataset="fashion_mnist",
                     data_dir=data_dir, batch_size=32, eval_batch_size=256, eval_examples=256,
                     num_train_steps=20, log_every_steps=5, eval_every_steps=7,
                     checkpoint_every_steps=6, warmup_epochs=0.0, lr_decay_epochs=(),
                     plot=False, shuffle_buffer_size=1024))
  config.update(overrides)
  return config


@pytest.mark.slow  # trains
def test_every_step_counts_in_one_training_record(tmp_path, fashion_mnist_data_dir):
  """A flush before an evaluation or a checkpoint writes the steps since the last log line;
  with log 5, eval 7, checkpoint 6 the training records fall at each of those steps."""
  flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path))
  train = [r["step"] for r in records(tmp_path) if "train_loss" in r]
  assert train == sorted({s for s in range(1, 21) if s % 5 == 0 or s % 7 == 0 or s % 6 == 0}
                         | {20})
  evals = [r["step"] for r in records(tmp_path) if "eval_accuracy" in r]
  assert evals == [7, 14, 20]


TINY_FLAGS = ["--config.widths=(4,4,4)", "--config.batch_size=32", "--config.eval_batch_size=256",
              "--config.eval_examples=256", "--config.num_train_steps=20",
              "--config.log_every_steps=5", "--config.eval_every_steps=7",
              "--config.checkpoint_every_steps=6", "--config.warmup_epochs=0",
              "--config.plot=False", "--config.shuffle_buffer_size=1024"]


def run_patched(workdir, data_dir, patch, *flags, timeout=300):
  """train.py in a subprocess with `patch` (Python code) run first, as a user runs it."""
  overridden = {flag.split("=")[0] for flag in flags}  # absl joins a tuple given twice
  tiny = [flag for flag in TINY_FLAGS if flag.split("=")[0] not in overridden]
  argv = ["train.py", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
          f"--config.data_dir={data_dir}", *tiny, *flags]
  code = f"import runpy, sys\n{patch}\nsys.argv = {argv!r}\nrunpy.run_path('train.py', run_name='__main__')"
  started = time.monotonic()
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=train_env(devices=2),
                          capture_output=True, text=True, timeout=timeout)
  return result, time.monotonic() - started


# At the save of step 12, the checkpoints folder stops taking writes: made immutable where
# chattr works (root on ext4, as `chattr +i` in the issue), else replaced by a file.
BREAK_SAVES_AT_12 = """
import os, shutil, subprocess
from flax_resnet import checkpointing
original = checkpointing.Checkpointer.save
def save(self, step, state, meta):
  if step == 12:
    self.wait()
    if subprocess.run(['chattr', '+i', self.directory], capture_output=True).returncode:
      shutil.move(self.directory, self.directory + '.moved')
      open(self.directory, 'w').close()
  return original(self, step, state, meta)
checkpointing.Checkpointer.save = save
"""


@pytest.mark.slow  # trains
def test_a_failed_checkpoint_save_is_one_error_and_the_process_exits(tmp_path,
                                                                     fashion_mnist_data_dir):
  workdir = tmp_path / "run"
  try:
    result, seconds = run_patched(workdir, fashion_mnist_data_dir, BREAK_SAVES_AT_12)
  finally:
    subprocess.run(["chattr", "-i", str(workdir / "checkpoints")], capture_output=True)
  assert result.returncode == 1, result.stderr[-3000:]
  assert seconds < 150  # orbax's waiting threads alone held it for 300 s
  error = result.stderr.strip().splitlines()[-1]
  assert re.match(r"error: saving the checkpoint of step 12 to .*checkpoints failed \(\w+Error: "
                  r".*\); the newest complete checkpoint is step 6\.", error), result.stderr
  assert "Traceback" not in result.stderr and "ERROR:absl" not in result.stderr
  # it surfaces at the next save (step 18), which first writes the metrics of every step
  assert max(r["step"] for r in records(workdir) if "train_loss" in r) == 18


@pytest.mark.parametrize("blocker", ["file", "immutable"])
@pytest.mark.slow
def test_an_unwritable_checkpoints_folder_is_refused_before_training(
    tmp_path, fashion_mnist_data_dir, blocker):
  from flax_resnet.errors import CheckpointError
  workdir = tmp_path / "run"
  folder = workdir / "checkpoints"
  workdir.mkdir()
  if blocker == "file":
    folder.write_text("not a folder")
  else:
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
      pytest.skip("chattr +i does not work here (needs root on ext4 or the like)")
  try:
    with pytest.raises(CheckpointError, match="cannot write checkpoints to .*checkpoints"):
      flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(workdir))
  finally:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
  assert not (workdir / "metrics.jsonl").exists()  # refused before training


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path, fashion_mnist_data_dir):
  from flax_resnet import workdir_lock
  from flax_resnet.errors import CheckpointError
  with workdir_lock.hold(str(tmp_path)):  # a run that is training there
    with pytest.raises(CheckpointError, match="is in use by another run"):
      flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # nothing else written


@pytest.mark.slow
def test_an_empty_workdir_is_refused(tmp_path, monkeypatch, fashion_mnist_data_dir):
  from flax_resnet.errors import ConfigError
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError, match="--workdir is empty"):
    flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir), "")
  assert list(tmp_path.iterdir()) == []


def _one_class_folder(root, classes=("only",)):
  from PIL import Image
  for split in ("train", "val"):
    for name in classes:
      (root / split / name).mkdir(parents=True)
      for i in range(8):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / split / name / f"{i}.png")
  return str(root)


@pytest.mark.slow
def test_num_classes_below_the_datasets_and_single_class_data_are_refused(
    tmp_path, fashion_mnist_data_dir):
  from flax_resnet.errors import ConfigError, DataError
  from flax_resnet.plan import plan_run
  with pytest.raises(ConfigError, match="num_classes=5 is below the 10 classes of "
                                        "fashion_mnist: labels 5 to 9 would have no output"):
    plan_run(tiny_config(fashion_mnist_data_dir, num_classes=5))
  assert plan_run(tiny_config(fashion_mnist_data_dir, num_classes=12)).num_classes == 12
  folder = dict(dataset="image_folder", image_size=8, batch_size=8, eval_batch_size=8,
                eval_examples=0)
  one = _one_class_folder(tmp_path / "one")
  with pytest.raises(DataError, match="has 1 class; a classifier needs at least 2"):
    plan_run(tiny_config(one, **folder))
  three = _one_class_folder(tmp_path / "three", ("a", "b", "c"))
  with pytest.raises(ConfigError, match="num_classes=2 is below the 3 classes"):
    plan_run(tiny_config(three, num_classes=2, **folder))


@pytest.mark.slow  # trains
def test_a_failed_evaluation_keeps_the_training_before_it(tmp_path, fashion_mnist_data_dir,
                                                          monkeypatch):
  """The evaluation at step 7 fails (a bad image); step 7 is saved before the error."""
  from flax_resnet.data import pipeline
  from flax_resnet.errors import DataError

  def bad_image(config, **kwargs):
    raise DataError("cannot decode val/x/broken.jpg")

  monkeypatch.setattr(pipeline, "create_eval_iterator", bad_image)
  with pytest.raises(DataError, match="broken.jpg"):
    flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path))
  assert sorted(int(e) for e in os.listdir(tmp_path / "checkpoints") if e.isdigit()) == [6, 7]


@pytest.mark.slow  # trains
def test_resuming_with_another_batch_size_is_refused_and_other_changes_are_named(
    tmp_path, fashion_mnist_data_dir, capsys):
  from flax_resnet.errors import CheckpointError
  first = tiny_config(fashion_mnist_data_dir, num_train_steps=6, eval_every_steps=100)
  flax_resnet.train_and_evaluate(first, str(tmp_path))
  before = (tmp_path / "metrics.jsonl").read_text()
  with pytest.raises(CheckpointError, match="holds a run of batch_size 32 .* this config has "
                                            "batch_size 64"):
    flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir, batch_size=64,
                                               num_train_steps=8), str(tmp_path))
  assert (tmp_path / "metrics.jsonl").read_text() == before  # refused before any write
  capsys.readouterr()
  flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir, num_train_steps=8,
                                             eval_every_steps=100, learning_rate=0.05),
                                 str(tmp_path))
  out = capsys.readouterr().out
  assert ("note: resuming with config changes: learning_rate 0.1 -> 0.05, "
          "num_train_steps 6 -> 8") in out


@pytest.mark.slow  # starts train.py
def test_ctrl_c_saves_like_sigterm_and_exits_130(tmp_path, fashion_mnist_data_dir):
  workdir = tmp_path / "run"
  argv = [sys.executable, "train.py", "--config=configs/fashion_mnist.py",
          f"--workdir={workdir}", f"--config.data_dir={fashion_mnist_data_dir}", *TINY_FLAGS,
          "--config.num_train_steps=2000", "--config.log_every_steps=1"]
  proc = subprocess.Popen(argv, cwd=ROOT, env=train_env(devices=2), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("step 9/"):
      proc.send_signal(signal.SIGINT)
      break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  saved = max(int(e) for e in os.listdir(workdir / "checkpoints") if e.isdigit())
  assert 9 <= saved < 2000
  assert f"SIGINT: saving a checkpoint at step {saved} and stopping" in out
  assert out.strip().splitlines()[-1].startswith(f"stopped: SIGINT at step {saved} of 2000 "
                                                 "(checkpoint saved")


@pytest.mark.slow  # starts train.py
def test_a_full_disk_is_one_error_and_the_process_exits(tmp_path, fashion_mnist_data_dir):
  """The workdir on a 200 kB tmpfs: metrics fit, the first checkpoint does not."""
  workdir = tmp_path / "small_disk"
  workdir.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(workdir)],
                    capture_output=True).returncode:
    pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
  try:
    result, seconds = run_patched(workdir / "run", fashion_mnist_data_dir, "",
                                  "--config.widths=(16,32,64)")
  finally:
    subprocess.run(["umount", str(workdir)], capture_output=True)
  assert result.returncode == 1, result.stderr[-3000:]
  assert seconds < 150
  assert result.stderr.strip().splitlines() == [
      f"error: saving the checkpoint of step 6 to {workdir}/run/checkpoints failed (no space "
      "left on device); no checkpoint is complete. Free space or fix the folder's permissions, "
      "then run the same command to resume"], result.stderr[-3000:]
