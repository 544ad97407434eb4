"""The training and evaluation iterators: Fashion-MNIST prepared from the local IDX files,
ImageNet and CIFAR-10 on tfds.testing.mock_data (offline, tests/data_utils.py), multi-host
sharding simulated with explicit process indices."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf

from data_utils import (assert_same_batches, fake_example, make_config, single_rectangle,
                        take)
from flax_resnet.data import fashion_mnist
from flax_resnet.data import datasets, pipeline
from flax_resnet.data import statistics

FASHION_SOURCE = fashion_mnist.DEFAULT_SOURCE_DIR


def _read_raw_idx(name):
  """Independent IDX reader: gunzip and skip the header (16 bytes for images, 8 for labels)."""
  with gzip.open(os.path.join(FASHION_SOURCE, name + ".gz"), "rb") as f:
    content = f.read()
  header = 16 if "images" in name else 8
  return np.frombuffer(content, np.uint8, offset=header)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST: the real 70,000 images.


@pytest.mark.slow
def test_fashion_mnist_train_stream_is_deterministic_and_resumable(fashion_mnist_data_dir):
  # Host 1 of 4 reads 15,000 examples in per-host batches of 2,048: 7 steps per epoch, so steps
  # 5..8 cross into the second epoch.
  config = make_config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir,
                       batch_size=8192, seed=7, cache=True)
  host = dict(process_index=1, process_count=4)
  stream = take(pipeline.create_train_iterator(config, **host), 9)
  for batch in stream:
    assert batch["image"].shape == (2048, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2048,) and batch["label"].dtype == np.int32
    assert batch["label"].min() >= 0 and batch["label"].max() < 10
    assert np.isfinite(batch["image"]).all()
  # Normalized pixels lie between (0 - mean) / std and (1 - mean) / std.
  lowest = -statistics.FASHION_MNIST_MEAN[0] / statistics.FASHION_MNIST_STD[0]
  highest = (1 - statistics.FASHION_MNIST_MEAN[0]) / statistics.FASHION_MNIST_STD[0]
  assert stream[0]["image"].min() == pytest.approx(lowest, abs=1e-5)
  assert stream[0]["image"].max() <= highest + 1e-5
  # Each epoch visits the host's examples in a new order: the label sequences differ.
  assert not np.array_equal(stream[0]["label"], stream[7]["label"])

  again = take(pipeline.create_train_iterator(config, **host), 9)
  assert_same_batches(stream, again)
  resumed = take(pipeline.create_train_iterator(config, start_step=5, **host), 4)
  assert_same_batches(stream[5:9], resumed)
  other_seed = next(pipeline.create_train_iterator(
      make_config(**{**config.to_dict(), "seed": 8}), **host))
  assert not np.array_equal(other_seed["image"], stream[0]["image"])


@pytest.mark.slow
def test_fashion_mnist_eval_covers_test_set_once(fashion_mnist_data_dir):
  config = make_config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir, batch_size=8,
                       eval_batch_size=3000)
  batches = list(pipeline.create_eval_iterator(config, process_index=0, process_count=1))
  assert len(batches) == 4
  assert all(b["image"].shape == (3000, 28, 28, 1) for b in batches)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 10000 and (masks[:10000] == 1).all() and (masks[10000:] == 0).all()
  labels = np.concatenate([b["label"] for b in batches])[:10000]
  raw_labels = _read_raw_idx("t10k-labels-idx1-ubyte")
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(raw_labels))


# ----------------------------------------------------------------------------------------------
# ImageNet and CIFAR-10 on fake data.


def _imagenet_bounds():
  mean, std = np.array(statistics.IMAGENET_MEAN), np.array(statistics.IMAGENET_STD)
  return -mean / std, (1 - mean) / std


@pytest.mark.parametrize("augmentation", ["paper", "inception"])
def test_imagenet_train_batches(fake_tfds, augmentation):
  config = make_config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4, seed=1,
                       imagenet_train_augmentation=augmentation)
  batches = take(pipeline.create_train_iterator(config, process_index=0, process_count=1), 6)
  low, high = _imagenet_bounds()
  for batch in batches:
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert (batch["image"] >= low - 1e-4).all() and (batch["image"] <= high + 1e-4).all()
  # 20 examples, 5 steps per epoch: an epoch shows each example once, the next one reshuffles.
  first_epoch = np.concatenate([b["label"] for b in batches[:5]])
  assert sorted(first_epoch) == list(range(20))
  resumed = take(pipeline.create_train_iterator(config, start_step=4, process_index=0,
                                                process_count=1), 2)
  assert_same_batches(batches[4:6], resumed)


def test_imagenet_train_hosts_read_disjoint_shards(fake_tfds):
  config = make_config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4, seed=1)
  labels = []
  for process in range(2):
    # 10 examples per host, per-host batch 2: an epoch is 5 steps.
    batches = take(pipeline.create_train_iterator(config, process_index=process,
                                                  process_count=2), 5)
    assert all(b["image"].shape == (2, 224, 224, 3) for b in batches)
    labels.append(set(np.concatenate([b["label"] for b in batches]).tolist()))
  assert len(labels[0]) == len(labels[1]) == 10
  assert labels[0] | labels[1] == set(range(20)) and not labels[0] & labels[1]


@pytest.mark.parametrize("crop,shape", [("center", (224, 224, 3)), ("ten_crop", (10, 224, 224, 3))])
def test_imagenet_eval_covers_split_across_two_hosts(fake_tfds, crop, shape):
  # 13 validation examples over 2 hosts (7 + 6), per-host batch 2: 4 batches on both hosts.
  config = make_config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4,
                       eval_batch_size=4, imagenet_eval_crop=crop)
  seen = []
  counts = []
  for process in range(2):
    batches = list(pipeline.create_eval_iterator(config, process_index=process, process_count=2))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (2, *shape) and batch["image"].dtype == np.float32
      assert batch["mask"].dtype == np.float32
      padding = batch["mask"] == 0
      assert (batch["image"][padding] == 0).all()
      seen.extend(batch["label"][batch["mask"] == 1].tolist())
  assert counts == [4, 4]
  assert sorted(seen) == list(range(13))


def test_imagenet_ten_crop_holds_five_crops_and_their_mirrors(fake_tfds):
  config = make_config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=2,
                       imagenet_eval_crop="ten_crop")
  images = next(pipeline.create_eval_iterator(config, process_index=0, process_count=1))["image"]
  np.testing.assert_array_equal(images[:, 5:], images[:, :5, :, ::-1])
  low, high = _imagenet_bounds()
  assert (images >= low - 1e-4).all() and (images <= high + 1e-4).all()
  # The four corners and the center are different windows.
  assert len({crop.tobytes() for crop in images[0, :5]}) == 5


def _cifar_source(index):
  example = fake_example("cifar10", tf.constant(index, tf.int64), None)
  return example["image"].numpy()


def _denormalize_cifar(images):
  mean, std = np.array(statistics.CIFAR10_MEAN), np.array(statistics.CIFAR10_STD)
  return np.round((images * std + mean) * 255).astype(np.int64)


def _cifar_ids(images):
  """Example ids of denormalized CIFAR fakes, read at the center (inside any 4-pixel shift)."""
  return images[:, 16, 16, 0] + 256 * images[:, 16, 16, 1]


@pytest.mark.parametrize("cache", [True, False])
def test_cifar_train_is_pad_crop_flip_of_the_source(fake_tfds, cache):
  # Host 3 of 8 (6,250 of the 50,000 fake examples), per-host batch 64.
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=512, seed=3,
                       cache=cache, shuffle_buffer_size=256)
  host = dict(process_index=3, process_count=8)
  batches = take(pipeline.create_train_iterator(config, **host), 2)
  batch = batches[0]
  assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  images = _denormalize_cifar(batch["image"])
  ids = _cifar_ids(images)
  np.testing.assert_array_equal(batch["label"], ids % 10)
  assert len(set(ids.tolist())) == 64  # A batch holds 64 distinct examples of this host's slice.
  assert ids.min() >= 3 * 6250 and ids.max() < 4 * 6250
  shifts = []
  for image, index in zip(images[:16], ids[:16]):
    padded = np.pad(_cifar_source(index), [(4, 4), (4, 4), (0, 0)])
    matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(image, padded[dy:dy + 32, dx:dx + 32][:, ::-1 if flip else 1])]
    assert len(matches) == 1
    shifts.append(matches[0])
  assert len(set(shifts)) > 4  # Offsets and flips are random.
  resumed = next(pipeline.create_train_iterator(config, start_step=1, **host))
  assert_same_batches(batches[1:], [resumed])


@pytest.mark.slow
def test_crop_padding_zero_leaves_flips_only(fake_tfds):
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=64, crop_padding=0,
                       cache=True)
  batch = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  images = _denormalize_cifar(batch["image"])
  flipped = []
  for image, index in zip(images, _cifar_ids(images)):
    source = _cifar_source(index)
    assert np.array_equal(image, source) or np.array_equal(image, source[:, ::-1])
    flipped.append(not np.array_equal(image, source))
  assert 0 < sum(flipped) < len(flipped)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.slow
def test_random_erasing_keeps_the_crops_and_flips_it_erases_over(fake_tfds, cache):
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=64, seed=1,
                       cache=cache, shuffle_buffer_size=256)
  plain = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  config.random_erasing = 1.0
  erased = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  np.testing.assert_array_equal(erased["label"], plain["label"])
  changed = (erased["image"] != plain["image"]).any(axis=-1)
  for mask in changed:  # The same augmented image, up to one erased rectangle.
    assert single_rectangle(mask) is not None


def test_cifar_eval_is_the_original_image(fake_tfds):
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=16)
  batches = list(pipeline.create_eval_iterator(config, process_index=0, process_count=1))
  assert len(batches) == 2 and batches[-1]["mask"].sum() == 14
  images = _denormalize_cifar(np.concatenate([b["image"] for b in batches]))
  for index in range(30):
    np.testing.assert_array_equal(images[index], _cifar_source(index))
  assert (images[30:] == _denormalize_cifar(np.zeros(3))).all()  # Padding: zeros after scaling.


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.slow
def test_small_images_resized_to_image_size(fake_tfds, cache):
  """image_size other than the dataset's own: the crops and flips of the native image, then
  a bilinear resize (for ImageNet-style nets on CIFAR-sized images)."""
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=8, crop_padding=0,
                       cache=cache, shuffle_buffer_size=64)
  assert datasets.dataset_info(config).image_shape == (32, 32, 3)
  native = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  config.image_size = 64
  assert datasets.dataset_info(config).image_shape == (64, 64, 3)
  resized = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  assert resized["image"].shape == (8, 64, 64, 3)
  np.testing.assert_array_equal(resized["label"], native["label"])
  mean, std = np.array(statistics.CIFAR10_MEAN), np.array(statistics.CIFAR10_STD)
  pixels = lambda images: (images * std + mean) * 255
  expected = tf.image.resize(_denormalize_cifar(native["image"]).astype(np.float32), [64, 64])
  np.testing.assert_allclose(pixels(resized["image"]), expected, atol=1e-2)
  batch = next(pipeline.create_eval_iterator(config, process_index=0, process_count=1))
  assert batch["image"].shape == (8, 64, 64, 3)


def test_eval_flip_adds_the_mirror_as_a_second_view(fake_tfds):
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=16, eval_flip=True)
  batches = list(pipeline.create_eval_iterator(config, process_index=0, process_count=1))
  assert [b["image"].shape for b in batches] == [(16, 2, 32, 32, 3)] * 2
  assert batches[-1]["mask"].sum() == 14
  images = _denormalize_cifar(np.concatenate([b["image"] for b in batches]))
  for index in range(30):
    np.testing.assert_array_equal(images[index, 0], _cifar_source(index))
    np.testing.assert_array_equal(images[index, 1], _cifar_source(index)[:, ::-1])


def test_cifar_validation_split_holds_out_last_5000(fake_tfds):
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=8,
                       eval_batch_size=2000, cifar_validation_split=True)
  info = datasets.dataset_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (45000, 5000)
  ids = []
  for process in range(2):
    for batch in pipeline.create_eval_iterator(config, process_index=process, process_count=2):
      ids.extend(_cifar_ids(_denormalize_cifar(batch["image"][batch["mask"] == 1])).tolist())
  assert sorted(ids) == list(range(45000, 50000))


@pytest.mark.parametrize("validation", [False, True])
def test_eval_examples_keeps_the_first_of_the_split_across_two_hosts(fake_tfds, validation):
  config = make_config(dataset="cifar10", data_dir=fake_tfds, batch_size=8, eval_batch_size=4,
                       cifar_validation_split=validation, eval_examples=11)
  info = datasets.dataset_info(config)
  first = 45000 if validation else 0
  assert info.num_eval_examples == 11
  assert info.eval_split == (f"train[{first}:{first + 11}]" if validation else "test[0:11]")
  ids = []
  for process in range(2):
    for batch in pipeline.create_eval_iterator(config, process_index=process, process_count=2):
      ids.extend(_cifar_ids(_denormalize_cifar(batch["image"][batch["mask"] == 1])).tolist())
  assert sorted(ids) == list(range(first, first + 11))
  # More than the split holds, or 0: the whole split.
  for limit in (0, 10**6):
    whole = datasets.dataset_info(make_config(**{**config.to_dict(), "eval_examples": limit}))
    assert whole.num_eval_examples == (5000 if validation else 10000)  # TFDS's test split
