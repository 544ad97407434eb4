"""`python -m flax_resnet.export`: ONNX graphs whose onnxruntime logits equal ours (where
jax2onnx and onnxruntime are installed), and torchvision and timm safetensors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import flax_resnet
from flax_resnet.inference import eval_logits
from train_utils import write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_cli(*args):
  return subprocess.run([sys.executable, "-m", "flax_resnet.export", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def onnx_logits(path_or_proto, x):
  ort = pytest.importorskip("onnxruntime")
  content = path_or_proto if isinstance(path_or_proto, str) else path_or_proto.SerializeToString()
  session = ort.InferenceSession(content, providers=["CPUExecutionProvider"])
  return session.run(["logits"], {"images": x})[0]


def with_statistics(variables, seed=1):
  """`variables` with BatchNorm statistics and scales away from their initial 0 and 1, so
  that folding them in shows."""
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  return jax.tree.map(lambda a: np.asarray(a) + 0.2 * np.abs(np.asarray(
      jax.random.normal(next(keys), a.shape))), variables)


@pytest.mark.parametrize("name,shape", [("cifar_resnet20", (28, 28, 1)),
                                        ("resnet18", (64, 64, 3)),
                                        ("preact_resnet18", (64, 64, 3))])
def test_onnx_logits_equal_ours(name, shape):
  pytest.importorskip("jax2onnx")
  from flax_resnet.export import to_onnx
  model = flax_resnet.create_model(name, num_classes=10)
  x = np.random.RandomState(0).randn(3, *shape).astype(np.float32)
  variables = with_statistics(model.init(jax.random.key(0), x[:1], train=False))
  proto = to_onnx(model, variables, shape)
  ours = np.asarray(model.apply(variables, x, train=False))
  for batch in (x[:1], x):  # the batch dimension is free
    theirs = onnx_logits(proto, batch)
    np.testing.assert_allclose(theirs, ours[:len(batch)], rtol=1e-4,
                               atol=1e-5 * np.abs(ours).max())


@pytest.mark.slow  # trains (conftest.trained_run)
def test_export_cli_onnx_of_a_trained_run(trained_run, tmp_path):
  pytest.importorskip("jax2onnx")
  workdir, config, _ = trained_run
  out = str(tmp_path / "run.onnx")
  result = export_cli(f"--workdir={workdir}", "--format=onnx", out)
  assert result.returncode == 0, result.stderr[-2000:]
  run = flax_resnet.load(workdir)
  from flax_resnet.data import pipeline
  images = next(pipeline.create_eval_iterator(config))["image"][:, 0]  # unmirrored views
  np.testing.assert_allclose(onnx_logits(out, images),
                             np.asarray(eval_logits(run.model, run.variables, images)),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_export_cli_torchvision_and_timm(tmp_path):
  workdir = str(tmp_path / "run")
  state = write_checkpoint(workdir, "resnet18", (32, 32, 3), "cifar10", num_classes=10)
  tv, timm = str(tmp_path / "tv.safetensors"), str(tmp_path / "timm.safetensors")
  assert export_cli(f"--workdir={workdir}", "--format=torchvision", tv).returncode == 0
  assert export_cli(f"--workdir={workdir}", "--format=timm", timm).returncode == 0
  for path, convert in ((tv, flax_resnet.from_torchvision), (timm, flax_resnet.from_timm)):
    model, variables = convert(path, "resnet18")
    assert model.num_classes == 10
    jax.tree.map(np.testing.assert_array_equal, variables["params"], state.params)
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], state.batch_stats)
  cifar = str(tmp_path / "cifar")
  write_checkpoint(cifar, "cifar_resnet20", (32, 32, 3), "cifar10")
  bad = export_cli(f"--workdir={cifar}", "--format=torchvision", str(tmp_path / "x.safetensors"))
  assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
  missing = export_cli(f"--workdir={tmp_path / 'nowhere'}", str(tmp_path / "x.onnx"))
  assert missing.returncode == 1 and "no work directory at" in missing.stderr
