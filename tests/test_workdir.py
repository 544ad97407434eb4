"""flax_resnet.load: a trained work directory read back gives the network, weights, config and
class names its run evaluated with; classes.json; one clear error for a bad work directory."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import flax_resnet
from flax_resnet.data import pipeline
from flax_resnet.data.class_names import FASHION_MNIST_CLASSES
from flax_resnet.errors import CheckpointError, DataError
from flax_resnet.inference import eval_logits
from flax_resnet.step import cross_entropy
from train_utils import saved_state, write_checkpoint

STEPS = 6  # conftest.trained_run's


def eval_metrics(run, config):
  """Accuracy and loss of `run` over the run's own eval batches."""
  hits = loss = count = 0.0
  for batch in pipeline.create_eval_iterator(config):
    logits = np.asarray(eval_logits(run.model, run.variables, batch["image"]))
    mask = batch["mask"]
    hits += np.sum((logits.argmax(-1) == batch["label"]) * mask)
    loss += np.sum(np.asarray(cross_entropy(logits, batch["label"], 10)) * mask)
    count += mask.sum()
  return hits / count, loss / count


@pytest.mark.slow  # trains (conftest.trained_run)
def test_load_gives_the_logits_the_run_evaluated_with(trained_run):
  workdir, config, result = trained_run
  run = flax_resnet.load(workdir)
  assert run.step == STEPS and run.image_shape == (28, 28, 1)
  assert run.model.widths == (4, 8, 8) and run.model.shortcut == "A"
  assert run.model.num_classes == 10 and run.model.axis_name is None
  assert run.config.ema_decay == 0.5 and run.config.widths == (4, 8, 8)
  assert run.class_names == list(FASHION_MNIST_CLASSES)
  with open(os.path.join(workdir, "classes.json")) as f:
    assert json.load(f)["classes"] == list(FASHION_MNIST_CLASSES)
  accuracy, loss = eval_metrics(run, config)
  assert accuracy == pytest.approx(result["eval_accuracy"], abs=1e-6)
  assert loss == pytest.approx(result["eval_loss"], rel=1e-5)
  ema_accuracy, ema_loss = eval_metrics(flax_resnet.load(workdir, ema=True), config)
  assert ema_accuracy == pytest.approx(result["ema_eval_accuracy"], abs=1e-6)
  assert ema_loss == pytest.approx(result["ema_eval_loss"], rel=1e-5)
  assert ema_loss != pytest.approx(loss, rel=1e-3)  # the EMA is other weights


@pytest.mark.slow  # trains (conftest.trained_run)
def test_load_selects_a_step(trained_run):
  workdir, _, _ = trained_run
  earlier = flax_resnet.load(workdir, step=3)
  assert earlier.step == 3
  jax.tree.map(np.testing.assert_array_equal, earlier.variables["params"],
               saved_state(workdir, 3)["params"])
  newest = flax_resnet.load(workdir)
  assert not np.array_equal(earlier.variables["params"]["fc"]["kernel"],
                            newest.variables["params"]["fc"]["kernel"])
  with pytest.raises(CheckpointError, match=r"no checkpoint of step 4 .* holds steps 3, 6"):
    flax_resnet.load(workdir, step=4)


@pytest.mark.slow  # trains (conftest.trained_run)
def test_preprocess_is_the_runs_eval_preprocessing_and_predict_names_classes(
    trained_run, fashion_mnist_data_dir, tmp_path):
  workdir, config, _ = trained_run
  run = flax_resnet.load(workdir)
  first = next(pipeline.create_eval_iterator(config))
  test_split = tfds.builder("fashion_mnist", data_dir=fashion_mnist_data_dir).as_dataset(
      split="test[:1]")
  pixels = next(iter(tfds.as_numpy(test_split)))["image"]  # (28, 28, 1) uint8
  views = run.preprocess(pixels)
  assert views.shape == (2, 28, 28, 1)  # the image and its mirror (config.eval_flip)
  np.testing.assert_allclose(views, first["image"][0], atol=1e-6)
  path = str(tmp_path / "item.png")
  Image.fromarray(pixels[..., 0]).save(path)
  np.testing.assert_allclose(run.preprocess(path), first["image"][0], atol=1e-6)
  predictions = run.predict(path, k=3)
  logits = np.asarray(eval_logits(run.model, run.variables, first["image"][:1]))[0]
  assert [p.index for p in predictions] == list(np.argsort(-logits)[:3])
  assert [p.name for p in predictions] == [FASHION_MNIST_CLASSES[p.index] for p in predictions]
  np.testing.assert_allclose(predictions[0].probability,
                             np.exp(logits.max()) / np.exp(logits).sum(), rtol=1e-5)
  Image.new("RGB", (28, 28), (200, 10, 10)).save(tmp_path / "red.png")
  with pytest.raises(DataError, match="red.png: a colour image .* grayscale"):
    run.preprocess(str(tmp_path / "red.png"))
  Image.new("RGB", (50, 40), (90, 90, 90)).save(tmp_path / "grey.jpg")  # 3 equal channels
  assert run.preprocess(str(tmp_path / "grey.jpg")).shape == (2, 28, 28, 1)


@pytest.mark.slow  # trains (conftest.trained_run)
def test_a_bad_workdir_is_one_clear_error(trained_run, tmp_path):
  workdir, _, _ = trained_run
  with pytest.raises(CheckpointError, match="no work directory at"):
    flax_resnet.load(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="no checkpoint in"):
    flax_resnet.load(str(tmp_path / "empty"))
  broken = tmp_path / "broken"
  shutil.copytree(workdir, broken)
  for root, _, files in os.walk(broken / "checkpoints" / str(STEPS) / "state"):
    for name in files:
      if os.path.getsize(os.path.join(root, name)) > 1000:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(100)
  with pytest.raises(CheckpointError, match=f"checkpoint at step {STEPS} .* cannot be read.*"
                                            "older ones: steps 3"):
    flax_resnet.load(str(broken))
  assert flax_resnet.load(str(broken), step=3).step == 3


@pytest.mark.slow
def test_ema_of_a_run_without_one_is_refused(tmp_path):
  state = write_checkpoint(str(tmp_path), "cifar_resnet20", (28, 28, 1), "fashion_mnist",
                           widths=(4, 8, 8), num_classes=10)
  run = flax_resnet.load(str(tmp_path))
  assert run.class_names == list(FASHION_MNIST_CLASSES)  # no classes.json: the dataset's
  jax.tree.map(np.testing.assert_array_equal, run.variables["params"], state.params)
  with pytest.raises(CheckpointError, match="holds no EMA .*ema_decay=0.0"):
    flax_resnet.load(str(tmp_path), ema=True)
