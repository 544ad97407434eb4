"""Preprocessing on real photos, top-k predictions, ImageNet class names and head replacement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image
from sklearn.datasets import load_sample_image

from flax_resnet import create_model
from flax_resnet.imagenet_classes import IMAGENET_CLASSES, IMAGENET_SYNSETS, short_name
from flax_resnet.inference import (IMAGENET_MEAN, IMAGENET_STD, Prediction, load_image,
                                   predict, preprocess, replace_head, top_k)


def photos():
  """scikit-learn's two sample photos (427x640), and one of them upright (640x427)."""
  china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")
  return {"china": china, "flower": flower, "china_upright": np.ascontiguousarray(
      china.transpose(1, 0, 2))}


def reference_preprocess(photo, resize_size, crop_size):
  """Independent of inference.py: the scale factor from the shorter side, numpy crop and
  normalization in float64, following torchvision's Resize / CenterCrop / Normalize."""
  height, width = photo.shape[:2]
  scale = resize_size / min(height, width)
  new_height = resize_size if height <= width else int(height * scale)
  new_width = resize_size if width < height else int(width * scale)
  resized = np.asarray(Image.fromarray(photo).resize((new_width, new_height), Image.BILINEAR))
  top = int(round((new_height - crop_size) / 2))
  left = int(round((new_width - crop_size) / 2))
  crop = resized[top:top + crop_size, left:left + crop_size].astype(np.float64) / 255
  return (crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)


@pytest.mark.parametrize("photo_name", ["china", "flower", "china_upright"])
@pytest.mark.parametrize("resize_size,crop_size", [(256, 224), (232, 224), (64, 56)])
def test_preprocess_matches_reference_on_photos(photo_name, resize_size, crop_size):
  photo = photos()[photo_name]
  x = preprocess(photo, resize_size, crop_size)
  assert x.shape == (crop_size, crop_size, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x, reference_preprocess(photo, resize_size, crop_size), atol=1e-5)
  # Undoing the normalization gives 8-bit pixel values again.
  pixels = (x * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
  assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3


def test_preprocess_matches_torchvision():
  torchvision = pytest.importorskip("torchvision")
  transforms = torchvision.transforms
  pipeline = transforms.Compose([
      transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
      transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
  for photo in photos().values():
    expected = pipeline(Image.fromarray(photo)).numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(preprocess(photo), expected, atol=1e-6)


def test_image_sources_agree(tmp_path):
  photo = photos()["flower"]
  path = tmp_path / "flower.png"
  Image.fromarray(photo).save(path)
  expected = preprocess(photo)
  np.testing.assert_array_equal(preprocess(path), expected)
  np.testing.assert_array_equal(preprocess(str(path)), expected)
  np.testing.assert_array_equal(preprocess(Image.fromarray(photo)), expected)
  np.testing.assert_array_equal(preprocess(photo.astype(np.float32) / 255), expected)
  gray = load_image(photo[..., 0])
  assert gray.mode == "RGB" and np.array_equal(np.asarray(gray)[..., 2], photo[..., 0])


def test_bad_images_are_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match="no image file"):
    load_image(tmp_path / "missing.jpg")
  with pytest.raises(ValueError, match="HxW or HxWxC"):
    load_image(np.zeros((2, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8, or floats in"):
    load_image(np.full((8, 8, 3), 300.0))
  with pytest.raises(ValueError, match="must not exceed"):
    preprocess(photos()["china"], resize_size=128, crop_size=224)


def test_top_k_returns_sorted_softmax_probabilities():
  rng = np.random.default_rng(0)
  probabilities = rng.dirichlet(np.ones(50), size=3)
  logits = np.log(probabilities) + rng.normal(size=(3, 1))  # softmax ignores a per-row shift
  top, indices = top_k(logits, k=7)
  expected_indices = np.argsort(-probabilities, axis=1)[:, :7]
  np.testing.assert_array_equal(indices, expected_indices)
  np.testing.assert_allclose(top, np.take_along_axis(probabilities, expected_indices, 1),
                             rtol=1e-5)
  assert np.all(np.diff(top, axis=1) <= 0) and np.all(top.sum(axis=1) <= 1 + 1e-6)
  with pytest.raises(ValueError, match="k must be"):
    top_k(logits, k=51)


def narrow_resnet18(num_classes=1000):
  """A ResNet-18 of narrow stages: ImageNet's stem and 1000 classes at a fraction of the work."""
  model = create_model("resnet18", widths=(8, 8, 16, 16), num_classes=num_classes)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return model, variables


@pytest.mark.slow
def test_predict_names_sorted_imagenet_classes(tmp_path):
  model, variables = narrow_resnet18()
  path = tmp_path / "china.jpg"
  Image.fromarray(photos()["china"]).save(path)
  predictions = predict(model, variables, path, k=5)
  assert len(predictions) == 5 and all(isinstance(p, Prediction) for p in predictions)
  probabilities = [p.probability for p in predictions]
  assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1
  assert all(p.name == IMAGENET_CLASSES[p.index].split(",")[0] for p in predictions)
  logits = jax.jit(model.apply)(variables, preprocess(path)[None])
  expected = jax.nn.softmax(logits)[0]
  np.testing.assert_allclose(probabilities, np.sort(np.asarray(expected))[::-1][:5], rtol=1e-5)
  assert predictions[0].index == int(jnp.argmax(logits))


@pytest.mark.slow
def test_predict_with_own_class_names():
  model, variables = narrow_resnet18(num_classes=3)
  predictions = predict(model, variables, photos()["flower"], k=3, resize_size=72,
                        crop_size=64, class_names=["a", "b", "c"])
  assert sorted(p.name for p in predictions) == ["a", "b", "c"]
  assert sum(p.probability for p in predictions) == pytest.approx(1, abs=1e-5)
  assert predict(model, variables, photos()["flower"], k=1, crop_size=64)[0].name is None
  with pytest.raises(ValueError, match="2 class names for a model of 3"):
    predict(model, variables, photos()["flower"], class_names=["a", "b"])


@pytest.mark.slow
def test_replace_head_keeps_the_backbone():
  model = create_model("cifar_resnet20")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  new_model, new_variables = replace_head(model, variables, 4, jax.random.key(1))
  assert new_model.num_classes == 4 and new_model.stem == model.stem
  assert new_variables["params"]["fc"]["kernel"].shape == (64, 4)
  # initialized as the model's own fc: PyTorch's nn.Linear default, uniform in +-1/sqrt(64)
  for leaf in new_variables["params"]["fc"].values():
    assert 0 < np.max(np.abs(leaf)) <= 1 / 8
  flat_old = traverse_util.flatten_dict(variables)
  flat_new = traverse_util.flatten_dict(new_variables)
  assert flat_old.keys() == flat_new.keys()
  for key in flat_old:
    if key[:2] != ("params", "fc"):
      assert flat_new[key] is flat_old[key], key
  features = jax.jit(lambda m, v: m.apply(v, x, return_features=True), static_argnums=0)
  old_features, new_features = features(model, variables), features(new_model, new_variables)
  np.testing.assert_array_equal(old_features["pooled"], new_features["pooled"])
  assert new_features["logits"].shape == (2, 4)
  logits, updates = jax.jit(lambda v: new_model.apply(v, x, train=True, mutable=["batch_stats"]))(
      new_variables)
  assert logits.shape == (2, 4) and "batch_stats" in updates
  other = replace_head(model, variables, 4, jax.random.key(2))[1]["params"]["fc"]["kernel"]
  assert not np.array_equal(other, new_variables["params"]["fc"]["kernel"])


def test_replace_head_refuses_variables_without_a_classifier():
  with pytest.raises(ValueError, match="no params/fc/kernel"):
    replace_head(create_model("cifar_resnet20"), {"params": {}}, 4, jax.random.key(0))


def test_imagenet_class_names():
  assert len(IMAGENET_CLASSES) == len(set(IMAGENET_CLASSES)) == 1000
  assert len(IMAGENET_SYNSETS) == len(set(IMAGENET_SYNSETS)) == 1000
  assert list(IMAGENET_SYNSETS) == sorted(IMAGENET_SYNSETS)  # label i = i-th synset by id
  assert short_name(0) == "tench" and IMAGENET_SYNSETS[0] == "n01440764"
  assert short_name(999) == "toilet tissue"
