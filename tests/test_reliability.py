"""A run killed at any moment resumes to the same end; nothing a user typed wrong damages a
workdir. Each test here backs one guarantee listed in the README."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from train_utils import (ROOT, assert_trees_equal, records, run_train, saved_state,
                         train_command, train_env)

pytestmark = pytest.mark.slow  # starts train.py or trains: `pytest -m 'not slow'` skips it

STEPS = 30
SHORT = [f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
         "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=5",
         "--config.keep_checkpoints=2", "--config.batch_size=32",
         "--config.eval_batch_size=2000", "--config.plot=False", "--config.warmup_epochs=0",
         "--config.cache=False", "--config.shuffle_buffer_size=1024",
         # The final evaluation on a fifth of the test split, single view: these tests are
         # about the train state.
         "--config.eval_examples=2000", "--config.eval_flip=False"]


def start(workdir, data_dir, *flags):
  return subprocess.Popen(train_command(workdir, data_dir, *flags), cwd=ROOT,
                          env=train_env(devices=2), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def kill_when(proc, condition, timeout=300):
  """SIGKILLs `proc` as soon as `condition()` holds (polled every few ms); True if it did."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if condition():
      proc.kill()
      proc.wait()
      return True
    time.sleep(0.002)
  return False


def checkpoint_entries(workdir):
  try:
    return os.listdir(os.path.join(workdir, "checkpoints"))
  except FileNotFoundError:
    return []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fashion_mnist_data_dir):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = subprocess.run(train_command(workdir, fashion_mnist_data_dir, *SHORT), cwd=ROOT,
                          env=train_env(devices=2), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  return workdir


def test_sigkill_at_several_moments_resumes_bit_identically(tmp_path, fashion_mnist_data_dir,
                                                            uninterrupted):
  workdir = str(tmp_path / "killed")
  kills = []
  # 1. during an asynchronous checkpoint write (its temporary folder exists), or just after
  proc = start(workdir, fashion_mnist_data_dir, *SHORT)
  kills.append(kill_when(proc, lambda: any(
      "tmp" in e or e == "10" for e in checkpoint_entries(workdir))))
  # 2. in the middle of training, between checkpoints
  proc = start(workdir, fashion_mnist_data_dir, *SHORT)
  metrics = os.path.join(workdir, "metrics.jsonl")
  kills.append(kill_when(proc, lambda: os.path.exists(metrics) and any(
      r.get("step") == 17 for r in records(workdir))))
  # 3. right after start, before the first step of the resumed run
  proc = start(workdir, fashion_mnist_data_dir, *SHORT)
  time.sleep(3)
  proc.kill()
  proc.wait()
  assert kills == [True, True]

  final = subprocess.run(train_command(workdir, fashion_mnist_data_dir, *SHORT), cwd=ROOT,
                         env=train_env(devices=2), capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
  assert "resuming at step" in final.stdout
  assert not any("tmp" in e for e in checkpoint_entries(workdir))
  assert_trees_equal(saved_state(workdir, STEPS), saved_state(uninterrupted, STEPS))
  # the metrics of the steps trained twice were not written twice
  steps = [r["step"] for r in records(workdir) if "train_loss" in r]
  assert steps == list(range(1, STEPS + 1))
  np.testing.assert_array_equal(
      [r["train_loss"] for r in records(workdir) if "train_loss" in r],
      [r["train_loss"] for r in records(uninterrupted) if "train_loss" in r])


def test_sigterm_saves_current_step_and_exits_zero(tmp_path, fashion_mnist_data_dir,
                                                   uninterrupted):
  workdir = str(tmp_path / "preempted")
  proc = start(workdir, fashion_mnist_data_dir, *SHORT)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step 12/"):
      proc.send_signal(signal.SIGTERM)
      sent = time.time()
      break
  out, _ = proc.communicate(timeout=120)
  lines.append(out)
  assert proc.returncode == 0, "".join(lines)[-2000:]
  assert time.time() - sent < 30
  text = "".join(lines)
  assert "SIGTERM: saving a checkpoint at step" in text
  saved = max(int(e) for e in checkpoint_entries(workdir) if e.isdigit())
  assert 12 <= saved < STEPS
  # The last line says how the run ended, and which evaluation the accuracy is from.
  evals = [r for r in records(workdir) if "eval_accuracy" in r]
  last = (f"last eval accuracy {evals[-1]['eval_accuracy']:.4f} at step {evals[-1]['step']}"
          if evals else "no evaluation yet")
  assert text.strip().splitlines()[-1] == (
      f"stopped: SIGTERM at step {saved} of {STEPS} (checkpoint saved; run the same command "
      f"to resume); {last}")
  # and the run resumes there, to the same end as the uninterrupted run
  result = run_train(workdir, fashion_mnist_data_dir, *SHORT, devices=2)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"resuming at step {saved}" in result.stdout
  assert_trees_equal(saved_state(workdir, STEPS), saved_state(uninterrupted, STEPS))


def test_divergence_stops_with_step_and_keeps_last_good_checkpoint(tmp_path,
                                                                   fashion_mnist_data_dir,
                                                                   uninterrupted):
  workdir = tmp_path / "diverged"
  shutil.copytree(os.path.join(uninterrupted, "checkpoints"), workdir / "checkpoints")
  before = {e: sorted(os.listdir(workdir / "checkpoints" / e))
            for e in checkpoint_entries(workdir)}
  longer = [f for f in SHORT if "num_train_steps" not in f]
  result = run_train(workdir, fashion_mnist_data_dir, *longer, "--config.num_train_steps=60",
                     # 3,200 per image at batch 32: the loss overflows within a few steps
                     "--config.learning_rate=100", "--config.lr_reference_batch_size=1",
                     devices=2)
  assert result.returncode == 1
  assert re.search(r"the training loss became (nan|inf|-inf) at step 3\d; stopped",
                   result.stderr), result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  after = {e: sorted(os.listdir(workdir / "checkpoints" / e))
           for e in checkpoint_entries(workdir)}
  assert after == before
  assert_trees_equal(saved_state(workdir, STEPS), saved_state(uninterrupted, STEPS))


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, fashion_mnist_data_dir,
                                                          uninterrupted):
  workdir = tmp_path / "corrupt"
  shutil.copytree(os.path.join(uninterrupted, "checkpoints"), workdir / "checkpoints")
  newest = workdir / "checkpoints" / str(STEPS) / "state"
  for root, _, files in os.walk(newest):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 1000:
        with open(path, "r+b") as f:
          f.truncate(100)
  longer = [f for f in SHORT if "num_train_steps" not in f]
  result = run_train(workdir, fashion_mnist_data_dir, *longer, "--config.num_train_steps=35",
                     devices=2)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"checkpoint at step {STEPS}" in result.stderr and "unreadable" in result.stderr
  assert f"resuming at step {STEPS - 5}" in result.stdout
  assert (workdir / "checkpoints" / f"unreadable-{STEPS}").is_dir()  # kept, not deleted
  assert "35" in checkpoint_entries(workdir)


@pytest.mark.parametrize("flag,message", [
    ("--config.model=cifar_resnet32", "this config trains cifar_resnet32 (widths [16, 32, 64])"),
    ("--config.widths=(16,32,32)", "this config trains cifar_resnet20 (widths [16, 32, 32])"),
])
def test_workdir_of_another_model_is_refused_untouched(tmp_path, fashion_mnist_data_dir,
                                                       uninterrupted, flag, message):
  workdir = tmp_path / "other"
  shutil.copytree(uninterrupted, workdir)
  listing = sorted(os.listdir(workdir))
  result = run_train(workdir, fashion_mnist_data_dir, *SHORT, flag, devices=2)
  assert result.returncode == 1
  assert "holds checkpoints of cifar_resnet20 (widths [16, 32, 64])" in result.stderr
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert sorted(os.listdir(workdir)) == listing
  assert_trees_equal(saved_state(workdir, STEPS), saved_state(uninterrupted, STEPS))


def test_unwritable_workdir_is_one_message(tmp_path, fashion_mnist_data_dir):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  result = run_train(blocker / "run", fashion_mnist_data_dir, *SHORT, devices=2)
  assert result.returncode == 1
  assert "cannot write to workdir" in result.stderr and "Traceback" not in result.stderr
  assert blocker.read_text() == "not a folder"


def test_missing_data_dir_is_one_message(tmp_path):
  result = subprocess.run(
      train_command(tmp_path / "run", tmp_path / "no_such_dir", *SHORT,
                    "--config.fashion_mnist_source_dir=/nonexistent"),
      cwd=ROOT, env=train_env(devices=2), capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert "error:" in result.stderr
  assert not (tmp_path / "run").exists()  # the data is checked before the workdir is made


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process_with_eight_devices(tmp_path, fashion_mnist_data_dir,
                                                            monkeypatch):
  """Two local processes of 4 CPU devices each (jax.distributed, gloo collectives) train like
  one process of 8 devices fed the same global batches, and their checkpoint restores there."""
  flags = [f for f in SHORT if "num_train_steps" not in f and "batch_size" not in f] + [
      "--config.num_train_steps=3", "--config.batch_size=32", "--config.eval_batch_size=2000",
      "--config.learning_rate=0.002"]
  workdir = tmp_path / "two_hosts"
  port = _free_port()
  procs = [subprocess.Popen(
      train_command(workdir, fashion_mnist_data_dir, *flags,
                    f"--coordinator_address=localhost:{port}", "--num_processes=2",
                    f"--process_id={i}"),
      cwd=ROOT, env=train_env(devices=4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  assert "over 8 devices" in outputs[0]

  # One process, 8 devices, the same global batches: host 0's then host 1's half of each.
  from flax_resnet import train_and_evaluate
  from flax_resnet.data import pipeline as input_pipeline
  from configs import fashion_mnist
  original = input_pipeline.create_train_iterator

  def both_hosts(config, start_step=0, **_):
    halves = [original(config, start_step=start_step, process_index=i, process_count=2)
              for i in range(2)]
    for a, b in zip(*halves):
      yield {k: np.concatenate([a[k], b[k]]) for k in a}

  monkeypatch.setattr(input_pipeline, "create_train_iterator", both_hosts)
  config = fashion_mnist.get_config()
  config.update(dict(num_train_steps=3, log_every_steps=1, eval_every_steps=1000,
                     checkpoint_every_steps=5, keep_checkpoints=2, batch_size=32,
                     eval_batch_size=2000, plot=False, warmup_epochs=0.0, cache=False,
                     shuffle_buffer_size=1024, learning_rate=0.002, eval_examples=2000,
                     eval_flip=False,
                     data_dir=fashion_mnist_data_dir))
  one_dir = tmp_path / "one_host"
  assert train_and_evaluate(config, str(one_dir))["steps"] == 3

  import jax
  # Few steps at a small learning rate: the first steps from He init are chaotic enough to
  # grow the different summation order of cross-process collectives (1e-7 at step 1) to 1e-3
  # by step 3 at lr 0.025. At lr 0.002 parameters and BN statistics agree to about 2e-6 after
  # 3 steps (measured). The momentum buffers (the gradients themselves) agree to 2e-6 unless a
  # ReLU input lies within rounding of zero and the two runs round it to opposite sides: the
  # synchronized BN statistics then spread that one pixel's gradient to every layer below,
  # 5.5e-3 (relative norm) at most in this test on Eigen (flax_resnet/cpu.py). Errors of the
  # multi-process setup itself (a host left out of the average or of the BN statistics) move
  # them by tens of percent. They are compared by norm: some of their elements are near zero.
  two, one = saved_state(workdir, 3), saved_state(one_dir, 3)
  assert jax.tree.structure(two) == jax.tree.structure(one)
  for part in ("params", "batch_stats"):
    for x, y in zip(jax.tree.leaves(two[part]), jax.tree.leaves(one[part])):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4,
                                 err_msg=part)
  for x, y in zip(jax.tree.leaves(two["opt_state"]), jax.tree.leaves(one["opt_state"])):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert np.linalg.norm(x - y) <= 2e-2 * np.linalg.norm(y) + 1e-7
  assert int(two["step"]) == int(one["step"]) == 3

  # The two-process checkpoint restores in this one-process run, which trains on from it.
  monkeypatch.setattr(input_pipeline, "create_train_iterator", original)
  config.num_train_steps = 5
  assert train_and_evaluate(config, str(workdir))["steps"] == 5
