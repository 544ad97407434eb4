"""The TensorFlow preprocessing ops of flax_resnet/data/augment.py, one at a time: shapes,
determinism for a given seed, and a property of each op's math."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_utils import single_rectangle
from flax_resnet.data import augment
from flax_resnet.data.statistics import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

SEED = tf.constant([3, 1], tf.int64)


def _seed(i):
  return tf.constant([i, 0], tf.int64)


def _noise(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _encoded(image, fmt):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, fmt)
  return tf.constant(buffer.getvalue())


def _imagenet_bounds():
  mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
  return -mean / std - 1e-4, (1 - mean) / std + 1e-4


# ----------------------------------------------------------------------------------------------
# Pixel ops.


def test_normalize_inverts_to_the_pixels():
  image = _noise((2, 5, 7, 3))
  out = augment.normalize(image, CIFAR10_MEAN, CIFAR10_STD).numpy()
  assert out.shape == image.shape and out.dtype == np.float32
  restored = (out * np.array(CIFAR10_STD) + np.array(CIFAR10_MEAN)) * 255
  np.testing.assert_allclose(restored, image, atol=1e-3)
  # The mean colour maps to 0, mean + std to 1, per channel.
  mean_pixel = np.array(CIFAR10_MEAN) * 255
  np.testing.assert_allclose(augment.normalize(mean_pixel, CIFAR10_MEAN, CIFAR10_STD), 0,
                             atol=1e-5)
  np.testing.assert_allclose(
      augment.normalize((np.array(CIFAR10_MEAN) + np.array(CIFAR10_STD)) * 255, CIFAR10_MEAN,
                        CIFAR10_STD), 1, atol=1e-5)


def test_random_flip_is_the_image_or_its_mirror_by_seed():
  image = tf.constant(_noise((6, 8, 3)))
  outcomes = []
  for i in range(32):
    out = augment.random_flip(image, _seed(i)).numpy()
    np.testing.assert_array_equal(out, augment.random_flip(image, _seed(i)).numpy())
    mirrored = np.array_equal(out, image.numpy()[:, ::-1])
    assert mirrored or np.array_equal(out, image.numpy())
    outcomes.append(mirrored)
  assert 0 < sum(outcomes) < 32


def test_with_mirror_second_view_is_the_mirror():
  image = _noise((6, 8, 3))
  views = augment.with_mirror(tf.constant(image)).numpy()
  assert views.shape == (2, 6, 8, 3)
  np.testing.assert_array_equal(views[0], image)
  np.testing.assert_array_equal(views[1], image[:, ::-1])


def test_pad_crop_flip_without_padding_is_the_image_or_its_mirror():
  images = _noise((64, 8, 8, 3))
  out = augment.pad_crop_flip(tf.constant(images), SEED, 0).numpy()
  assert out.shape == images.shape and out.dtype == np.uint8
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  for o, i, m in zip(out, images, mirrored):
    assert m or np.array_equal(o, i)
  assert 0 < sum(mirrored) < 64


def test_pad_crop_flip_is_a_shifted_window_of_the_padded_image():
  images = _noise((32, 8, 8, 3), seed=1)
  out = augment.pad_crop_flip(tf.constant(images), SEED, 2).numpy()
  np.testing.assert_array_equal(out, augment.pad_crop_flip(tf.constant(images), SEED, 2).numpy())
  assert not np.array_equal(out, augment.pad_crop_flip(tf.constant(images), _seed(9), 2).numpy())
  found = []
  for o, image in zip(out, images):
    padded = np.pad(image, [(2, 2), (2, 2), (0, 0)])
    matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
               if np.array_equal(o, padded[dy:dy + 8, dx:dx + 8][:, ::-1 if flip else 1])]
    assert len(matches) == 1
    found.append(matches[0])
  assert len(set(found)) > 8  # Offsets and flips vary per image.


def test_random_erase_replaces_one_rectangle_of_noise():
  images = tf.fill([512, 28, 28, 3], 7.0)  # 7: not a plausible standard normal draw
  seed = tf.constant([4, 2])
  erased = augment.random_erase(images, seed, 0.5).numpy()
  np.testing.assert_array_equal(erased, augment.random_erase(images, seed, 0.5).numpy())
  changed = erased != 7.0
  assert (changed.all(axis=-1) == changed.any(axis=-1)).all()  # every channel of a pixel
  shapes = [single_rectangle(mask) for mask in changed.any(axis=-1)]
  erased_shapes = [s for s in shapes if s is not None]
  assert 200 < len(erased_shapes) < 312  # p = 0.5 of 512: binomial, +-5 sigma
  areas = np.array([h * w for h, w in erased_shapes]) / (28 * 28)
  aspects = np.array([h / w for h, w in erased_shapes])
  # Rounded to whole pixels: a little outside the drawn [0.02, 0.4] and [0.3, 3.33].
  assert areas.min() >= 0.01 and areas.max() <= 0.45 and 0.15 < areas.mean() < 0.25
  assert aspects.min() >= 0.25 and aspects.max() <= 4 and (aspects < 0.7).any() and (
      aspects > 1.4).any()
  noise = erased[changed]
  assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05


def test_random_erase_probability_zero_is_identity_and_one_always_erases():
  images = tf.fill([64, 16, 16, 1], 7.0)
  np.testing.assert_array_equal(augment.random_erase(images, SEED, 0.0).numpy(), images.numpy())
  always = (augment.random_erase(images, SEED, 1.0).numpy() != 7.0)[..., 0]
  for mask in always:
    height, width = single_rectangle(mask)
    assert 0.01 * 256 <= height * width <= 0.45 * 256


def test_resize_shape_and_constant_image():
  image = tf.fill([10, 14, 3], 42.0)
  out = augment.resize(image, [5, 6]).numpy()
  assert out.shape == (5, 6, 3)
  np.testing.assert_allclose(out, 42.0, atol=1e-4)
  np.testing.assert_allclose(augment.resize(image, [5, 6], antialias=True).numpy(), 42.0,
                             atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Crop windows.


def test_center_crop_window_arithmetic():
  # Shorter side 256: a centered 224 square; (320 - 224 + 1) // 2 = 48 columns to its left.
  np.testing.assert_array_equal(augment.center_crop_window(tf.constant([256, 320, 3]), 224),
                                [16, 48, 224, 224])
  # Portrait 512 x 400: side round(400 * 224 / 256) = 350, centered.
  np.testing.assert_array_equal(augment.center_crop_window(tf.constant([512, 400, 3]), 224),
                                [81, 25, 350, 350])


def test_paper_crop_window_is_a_square_of_the_scaled_side():
  shape = tf.constant([300, 400, 3])
  sides = set()
  for i in range(64):
    y, x, h, w = augment.paper_crop_window(shape, _seed(i), 224).numpy()
    np.testing.assert_array_equal([y, x, h, w],
                                  augment.paper_crop_window(shape, _seed(i), 224).numpy())
    assert h == w and 0 <= y <= 300 - h and 0 <= x <= 400 - w
    # Shorter side resized to S in [256, 480]: the window is 224 * 300 / S pixels of the original.
    assert round(224 * 300 / 480) <= h <= round(224 * 300 / 256)
    sides.add(int(h))
  assert len(sides) > 10


def test_inception_crop_window_bounds():
  shape = tf.constant([300, 400, 3])
  areas = []
  for i in range(64):
    y, x, h, w = augment.inception_crop_window(shape, _seed(i), 224).numpy()
    np.testing.assert_array_equal([y, x, h, w],
                                  augment.inception_crop_window(shape, _seed(i), 224).numpy())
    assert 0 <= y and y + h <= 300 and 0 <= x and x + w <= 400
    areas.append(h * w / (300 * 400))
    assert 0.7 <= h / w <= 1.4  # aspect 3/4..4/3, up to rounding to whole pixels
  assert min(areas) >= 0.07 and max(areas) <= 1.0 and np.std(areas) > 0.05


def test_train_crop_window_chooses_the_augmentation():
  shape = tf.constant([300, 400, 3])
  np.testing.assert_array_equal(augment.train_crop_window(shape, SEED, 224, "paper"),
                                augment.paper_crop_window(shape, SEED, 224))
  np.testing.assert_array_equal(augment.train_crop_window(shape, SEED, 224, "inception"),
                                augment.inception_crop_window(shape, SEED, 224))


def test_ten_crops_are_corners_center_and_mirrors():
  # size 8: the shorter side is resized to round(8 * 256 / 224) = 9, which this image has.
  image = _noise((9, 12, 3))
  crops = augment.ten_crops_of(tf.constant(image), 8).numpy()
  assert crops.shape == (10, 8, 8, 3)
  expected = [image[:8, :8], image[:8, 4:], image[1:, :8], image[1:, 4:], image[0:8, 2:10]]
  for crop, window in zip(crops[:5], expected):
    np.testing.assert_allclose(crop, window, atol=1e-3)
  np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])
  jpeg = _encoded(_noise((40, 50, 3)), "JPEG")
  assert augment.ten_crops(jpeg, 16).shape == (10, 16, 16, 3)


# ----------------------------------------------------------------------------------------------
# Whole images.


def test_decode_any_reads_every_format():
  image = _noise((6, 7, 3))
  for fmt in ("PNG", "BMP"):
    np.testing.assert_array_equal(augment.decode_any(_encoded(image, fmt)), image)
  gray = _encoded(_noise((6, 7)), "PNG")
  assert augment.decode_any(gray).shape == (6, 7, 3)


@pytest.mark.parametrize("augmentation", ["paper", "inception"])
def test_imagenet_train_image(augmentation):
  jpeg = _encoded(_noise((60, 80, 3)), "JPEG")
  out = augment.imagenet_train_image(jpeg, SEED, 32, augmentation).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out, augment.imagenet_train_image(jpeg, SEED, 32,
                                                                  augmentation).numpy())
  assert not np.array_equal(out, augment.imagenet_train_image(jpeg, _seed(8), 32,
                                                              augmentation).numpy())
  low, high = _imagenet_bounds()
  assert (out >= low).all() and (out <= high).all()


def test_imagenet_eval_image_is_the_normalized_center_crop():
  image = _noise((64, 80, 3))
  png = _encoded(image, "PNG")
  # No chroma subsampling: decoding a window then gives the pixels of that window of the image.
  jpeg = tf.io.encode_jpeg(tf.constant(image), quality=100, chroma_downsampling=False)
  decoded = tf.io.decode_jpeg(jpeg, channels=3)
  y, x, h, w = augment.center_crop_window(tf.shape(decoded), 32).numpy()
  expected = augment.normalize(augment.resize(decoded[y:y + h, x:x + w], [32, 32]),
                               IMAGENET_MEAN, IMAGENET_STD)
  np.testing.assert_allclose(augment.imagenet_eval_image(jpeg, 32, "center"), expected,
                             atol=1e-4)
  assert augment.imagenet_eval_image(jpeg, 32, "ten_crop").shape == (10, 32, 32, 3)
  # The image-folder version decodes any format and crops the same window.
  folder = augment.folder_eval_image(png, 32, "center").numpy()
  y, x, h, w = augment.center_crop_window(tf.constant(image.shape), 32).numpy()
  np.testing.assert_allclose(
      folder, augment.normalize(augment.resize(image[y:y + h, x:x + w], [32, 32]),
                                IMAGENET_MEAN, IMAGENET_STD), atol=1e-4)
  assert augment.folder_eval_image(png, 32, "ten_crop").shape == (10, 32, 32, 3)


@pytest.mark.parametrize("augmentation", ["paper", "inception"])
def test_folder_train_image_of_one_colour(augmentation):
  colour = np.array([200, 30, 90], np.uint8)
  png = _encoded(np.broadcast_to(colour, (40, 70, 3)).copy(), "PNG")
  out = augment.folder_train_image(png, SEED, 16, augmentation).numpy()
  assert out.shape == (16, 16, 3)
  np.testing.assert_array_equal(out, augment.folder_train_image(png, SEED, 16,
                                                                augmentation).numpy())
  # Any crop and flip of a one-colour image is that colour, normalized.
  np.testing.assert_allclose(out, augment.normalize(colour, IMAGENET_MEAN, IMAGENET_STD)
                             .numpy() * np.ones_like(out), atol=1e-4)
