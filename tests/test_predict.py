"""`python -m flax_resnet.predict`: top-k classes per image from a work directory or PyTorch
weights, folders, a CSV, and one line per bad input while the others are still classified."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import flax_resnet
from flax_resnet.data.class_names import FASHION_MNIST_CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def predict_cli(*args):
  return subprocess.run([sys.executable, "-m", "flax_resnet.predict", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.slow  # trains (conftest.trained_run)
def test_workdir_folder_csv_and_bad_inputs(trained_run, fashion_mnist_data_dir, tmp_path):
  workdir, _, _ = trained_run
  folder = tmp_path / "items"
  (folder / "sub").mkdir(parents=True)
  split = tfds.builder("fashion_mnist", data_dir=fashion_mnist_data_dir).as_dataset(
      split="test[:3]")
  for i, example in enumerate(tfds.as_numpy(split)):
    Image.fromarray(example["image"][..., 0]).save(folder / ("sub" if i == 2 else "") / f"{i}.png")
  (folder / "notes.txt").write_text("not an image, not an image extension: skipped")
  (tmp_path / "broken.png").write_bytes(b"no PNG at all")
  Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "red.png")
  out_csv = tmp_path / "out.csv"
  result = predict_cli(f"--workdir={workdir}", "--top=3", "--batch_size=2", f"--csv={out_csv}",
                       str(folder), str(tmp_path / "missing.jpg"), str(tmp_path / "broken.png"),
                       str(tmp_path / "red.png"))
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 3 and "Traceback" not in result.stderr
  assert "missing.jpg: no such file" in errors[0]
  assert "broken.png: not a readable image" in errors[1]
  assert "red.png: a colour image" in errors[2]
  assert "3 images classified, 3 failed" in result.stderr
  lines = result.stdout.splitlines()
  paths = [str(folder / "0.png"), str(folder / "1.png"), str(folder / "sub" / "2.png")]
  assert [l.split(": ")[0] for l in lines] == paths
  run = flax_resnet.load(workdir)
  for line, path in zip(lines, paths):
    expected = run.predict(path, k=3)
    assert line == f"{path}: " + ", ".join(f"{p.name} {p.probability:.3f}" for p in expected)
  with open(out_csv) as f:
    rows = list(csv.DictReader(f))
  assert [r["path"] for r in rows[:3]] == paths
  assert all(r["name_1"] in FASHION_MNIST_CLASSES and r["error"] == "" for r in rows[:3])
  assert [r["error"] != "" for r in rows[3:]] == [True] * 3


@pytest.mark.slow
def test_torchvision_weights(tmp_path):
  from safetensors.numpy import save_file
  import jax
  model = flax_resnet.create_model("resnet18")
  variables = model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
  save_file(flax_resnet.to_torchvision(variables, "resnet18"), str(tmp_path / "r18.safetensors"))
  photo = np.random.RandomState(0).randint(0, 256, (120, 90, 3), np.uint8)
  Image.fromarray(photo).save(tmp_path / "photo.jpg")
  result = predict_cli(f"--weights={tmp_path / 'r18.safetensors'}", "--model=resnet18",
                       "--top=2", str(tmp_path / "photo.jpg"))
  assert result.returncode == 0, result.stderr[-2000:]
  expected = flax_resnet.predict(model, variables, str(tmp_path / "photo.jpg"), k=2)
  assert result.stdout.strip() == f"{tmp_path / 'photo.jpg'}: " + ", ".join(
      f"{p.name} {p.probability:.3f}" for p in expected)
  assert expected[0].name  # ImageNet's names for a 1000-class model
  bad = predict_cli(f"--weights={tmp_path / 'r18.safetensors'}", "--model=resnet99", "x.jpg")
  assert bad.returncode == 1 and bad.stderr.startswith("error: --model=resnet99 is none of")


def test_the_package_function_stays_callable_after_the_module_is_imported():
  import importlib
  module = importlib.import_module("flax_resnet.predict")
  assert hasattr(module, "main")
  from flax_resnet import predict
  assert callable(predict) and callable(flax_resnet.predict)
  model = flax_resnet.create_model("cifar_resnet20", num_classes=1000, widths=(4, 4, 4))
  import jax
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
  image = np.zeros((40, 40, 3), np.uint8)
  got = flax_resnet.predict(model, variables, image, k=2, resize_size=36, crop_size=32)
  assert len(got) == 2 and got[0].name is not None
