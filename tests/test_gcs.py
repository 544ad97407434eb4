"""train.py with --workdir=gs://... and --config.data_dir=gs://..., offline, against a local GCS
emulator (tests/gcs_emulator.py): every client (TensorFlow's gfile and tf.data, TFDS, epath,
orbax and tensorstore, TensorBoard's writer) reads and writes the emulated bucket. Kept short:
a few steps of Fashion-MNIST on 2 CPU devices per process."""

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

import gcs_emulator
from train_utils import ROOT, assert_trees_equal, train_command, train_env

pytestmark = pytest.mark.slow  # starts train.py or trains: `pytest -m 'not slow'` skips it

BUCKET = "bucket"
STEPS = 6
SHORT = [f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
         "--config.eval_every_steps=1000", "--config.checkpoint_every_steps=2",
         "--config.keep_checkpoints=2", "--config.batch_size=32",
         "--config.eval_batch_size=200", "--config.eval_examples=200",
         "--config.eval_flip=False", "--config.plot=False", "--config.warmup_epochs=0",
         "--config.cache=False", "--config.shuffle_buffer_size=256"]


class Emulator:
  def __init__(self, port: int):
    self.url = f"http://127.0.0.1:{port}"

  def upload(self, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{BUCKET}/o?{query}",
                                     data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request).read()

  def names(self, prefix: str) -> list[str]:
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{BUCKET}/o?{query}") as response:
      return [item["name"] for item in json.load(response).get("items", [])]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory, fashion_mnist_data_dir):
  """The emulator on a free port of 127.0.0.1 with the session's prepared Fashion-MNIST copied
  to gs://bucket/tfds, and this process's and its children's clients pointed at it."""
  port = gcs_emulator.free_port()
  server = gcs_emulator.start_emulator(port, BUCKET)
  cert, key = gcs_emulator.make_certificate(str(tmp_path_factory.mktemp("tls")))
  proxy = gcs_emulator.Proxy(("127.0.0.1", port), cert, key).start()
  emulator = Emulator(port)
  for folder, _, files in os.walk(fashion_mnist_data_dir):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        emulator.upload("tfds/" + os.path.relpath(path, fashion_mnist_data_dir), f.read())
  with pytest.MonkeyPatch.context() as mp:
    for key_, value in gcs_emulator.emulator_env(port, proxy.port, cert).items():
      mp.setenv(key_, value)
    yield emulator
  proxy.stop()
  server.stop()


def _train(run, *flags):
  return train_command(f"gs://{BUCKET}/{run}", f"gs://{BUCKET}/tfds", *SHORT, *flags)


def _run(run, *flags, devices=2):
  result = subprocess.run(_train(run, *flags), cwd=ROOT, env=train_env(devices), text=True,
                          capture_output=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def _saved_state(run, step):
  """The raw saved train state of `step` in gs://bucket/RUN, read through orbax/tensorstore."""
  from flax_resnet.checkpointing import read_state
  return read_state(f"gs://{BUCKET}/{run}/checkpoints", step)


@pytest.fixture(scope="module")
def gcs_uninterrupted(gcs):
  result = _run("full", "--config.plot=True")
  assert "starting afresh" in result.stdout
  return result


def test_gcs_train_writes_checkpoints_metrics_tensorboard_and_plot(gcs, gcs_uninterrupted):
  from flax_resnet.reporting import read_metrics
  names = gcs.names("full/")
  assert f"full/checkpoints/{STEPS}/commit_success.txt" in names
  assert "full/curves.png" in names
  assert any("events.out.tfevents" in n for n in names)
  records = read_metrics(f"gs://{BUCKET}/full")
  assert [r["step"] for r in records if "train_loss" in r] == list(range(1, STEPS + 1))
  assert any("eval_accuracy" in r for r in records)


def test_gcs_sigkill_resumes_bit_identically(gcs, gcs_uninterrupted):
  from flax_resnet.reporting import read_metrics
  proc = subprocess.Popen(_train("killed"), cwd=ROOT, env=train_env(2),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline, killed = time.time() + 240, False
  while time.time() < deadline and proc.poll() is None:
    # once the checkpoint of step 2 is complete (orbax's commit file on gs://), while the
    # run goes on training
    if "killed/checkpoints/2/commit_success.txt" in gcs.names("killed/checkpoints/"):
      proc.kill()
      killed = True
      break
    time.sleep(0.05)
  output = proc.communicate()[0]
  assert killed, output[-3000:]

  result = _run("killed")
  assert "resuming at step" in result.stdout
  assert_trees_equal(_saved_state("killed", STEPS), _saved_state("full", STEPS))
  full, resumed = read_metrics(f"gs://{BUCKET}/full"), read_metrics(f"gs://{BUCKET}/killed")
  losses = lambda records: [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
  assert losses(resumed) == losses(full)  # steps trained twice are recorded once


def test_gcs_two_processes_write_one_checkpoint(gcs):
  port = gcs_emulator.free_port()
  flags = ["--config.num_train_steps=3", f"--coordinator_address=localhost:{port}",
           "--num_processes=2"]
  procs = [subprocess.Popen(_train("two_hosts", *flags, f"--process_id={i}"), cwd=ROOT,
                            env=train_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert "over 4 devices" in outputs[0]
  state = _saved_state("two_hosts", 3)
  assert int(state["step"]) == 3
  assert all(np.all(np.isfinite(x)) for x in __import__("jax").tree.leaves(state["params"]))


def test_gcs_missing_bucket_is_one_message(gcs):
  result = subprocess.run(
      train_command("gs://no-such-bucket/run", f"gs://{BUCKET}/tfds", *SHORT), cwd=ROOT,
      env=train_env(2), text=True, capture_output=True, timeout=300)
  assert result.returncode == 1
  assert "bucket gs://no-such-bucket does not exist" in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
