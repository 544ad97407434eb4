"""The benchmark scripts run as the README shows and report what they claim (no timing)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts train.py or trains: `pytest -m 'not slow'` skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_benchmark_writes_its_figures(tmp_path):
  path = tmp_path / "figures.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/step_speed.py", "--model=cifar_resnet20", "--batch_size=16",
       "--image_size=32", "--devices=2", "--warmup=0", "--rounds=2", "--steps=1",
       f"--json={path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(path.read_text())
  assert figures["devices"] == 2 and figures["batch_size"] == 16
  assert figures["batch_norm"] == "synchronized"  # as train.py runs it
  assert figures["images_per_second"] > 0 and figures["compile_seconds"] > 0
  assert len(figures["step_seconds_all"]) == 2
  # 40.6 M multiply-adds per 32x32 image: the model really is the paper's ResNet-20.
  assert abs(figures["forward_flops"] / (2 * 40.6e6 * 16) - 1) < 0.01
  # XLA's count of the whole step against 3 x forward: nothing computed twice (recomputed
  # elementwise chains once pushed ResNet-152 above 1). It stays under 1 because XLA skips the
  # taps on zero padding (16% of them on 8x8 maps) and the image's gradient (0.930 measured).
  assert 0.9 < figures["flops_vs_3x_forward"] < 1.0
  assert f"images_per_second: {figures['images_per_second']:.1f}" in result.stdout


def test_train_step_benchmark_can_take_batch_norm_statistics_per_device(tmp_path):
  path = tmp_path / "figures.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/step_speed.py", "--model=cifar_resnet20", "--batch_size=8",
       "--image_size=16", "--devices=2", "--warmup=0", "--rounds=1", "--steps=1",
       "--per_device_batch_norm", f"--json={path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert json.loads(path.read_text())["batch_norm"] == "per device"
  assert "BatchNorm statistics per device" in result.stdout


def test_train_step_benchmark_times_a_widened_network(tmp_path):
  path = tmp_path / "figures.json"
  common = ["--model=cifar_resnet20", "--batch_size=8", "--image_size=16", "--devices=1",
            "--warmup=0", "--rounds=1", "--steps=1"]
  result = subprocess.run(
      [sys.executable, "benchmarks/step_speed.py", *common, "--widths=32,64,128",
       f"--json={path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(path.read_text())
  assert figures["widths"] == [32, 64, 128]
  assert "widths 32,64,128" in result.stdout
  from flax_resnet import count_macs, create_model
  macs = {widths: count_macs(create_model("cifar_resnet20", widths=widths), (1, 16, 16, 3))
          for widths in [(16, 32, 64), (32, 64, 128)]}
  assert figures["forward_flops"] == 2 * 8 * macs[32, 64, 128]
  assert 3.5 < macs[32, 64, 128] / macs[16, 32, 64] < 4.1  # twice the widths


def test_convolution_benchmark_times_the_three_convolutions_of_a_step():
  result = subprocess.run(
      [sys.executable, "benchmarks/convolution.py", "--batch_size=2", "--image_size=8",
       "--channels=32", "--calls=1", "--conv_library=eigen"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "convolutions on eigen" in result.stdout
  assert "batch 2, 8x8, 3x3, 32 -> 32 channels, stride 1" in result.stdout
  for name in ("forward", "input_gradient", "weight_gradient"):
    line = next(l for l in result.stdout.splitlines() if l.startswith(f"{name}: "))
    assert float(line.split()[1]) > 0 and "GFLOP/s" in line


def test_convolution_benchmark_compares_with_pytorch():
  pytest.importorskip("torch")  # the benchmark's optional dependency, not installed by CI
  result = subprocess.run(
      [sys.executable, "benchmarks/convolution.py", "--batch_size=2", "--image_size=8",
       "--channels=16", "--stride=2", "--calls=1", "--compare_torch"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ("forward", "input_gradient", "weight_gradient"):
    line = next(l for l in result.stdout.splitlines() if l.startswith(f"  torch_{name}: "))
    assert float(line.split()[1]) > 0 and float(line.rsplit(maxsplit=1)[1]) > 0


def test_convolution_benchmark_rewrites_compute_the_same_convolution_and_gradients():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import convolution
  finally:
    sys.path.remove(os.path.join(ROOT, "benchmarks"))
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)  # not square: rows and columns
  w = rng.standard_normal((3, 3, 4, 3)).astype(np.float32)  # differ, in != out channels
  expected_y, vjp = jax.vjp(convolution.direct, x, w)
  dy = rng.standard_normal(expected_y.shape).astype(np.float32)
  for name in ("width_taps", "all_taps"):
    y, rewritten_vjp = jax.vjp(convolution.FORMULATIONS[name], x, w)
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5, err_msg=name)
    for got, want in zip(rewritten_vjp(dy), vjp(dy)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
  with pytest.raises(SystemExit, match="needs --stride=1"):
    convolution.main(["--stride=2", "--formulation=width_taps"])


def test_fashion_mnist_folders_holds_the_chosen_classes_in_label_order(tmp_path):
  from flax_resnet.data.fashion_mnist import DEFAULT_SOURCE_DIR, find_idx_files, read_idx
  result = subprocess.run(
      [sys.executable, "benchmarks/fashion_mnist_folders.py", str(tmp_path), "--classes=7,5",
       "--per_class=3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "6 training and 2000 validation images" in result.stdout  # 1,000 test images a class
  assert sorted(os.listdir(tmp_path / "train")) == ["5 Sandal", "7 Sneaker"]
  files = find_idx_files(DEFAULT_SOURCE_DIR)
  images = read_idx(files["train-images-idx3-ubyte"])
  labels = read_idx(files["train-labels-idx1-ubyte"])
  first = int(np.flatnonzero(labels == 5)[0])  # the first sandal of the training file
  from PIL import Image
  saved = np.asarray(Image.open(tmp_path / "train" / "5 Sandal" / f"{first:05d}.png"))
  np.testing.assert_array_equal(saved, images[first])
  assert len(os.listdir(tmp_path / "train" / "5 Sandal")) == 3
