"""Input pipelines: Fashion-MNIST prepared from the local IDX files, ImageNet and CIFAR-10 on
tfds.testing.mock_data (offline), multi-host evaluation simulated with explicit process indices."""

import gzip
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import splits as splits_lib

from flax_resnet.data import fashion_mnist as fashion_mnist_local
from flax_resnet.data import pipeline as ip

FASHION_SOURCE = fashion_mnist_local.DEFAULT_SOURCE_DIR


def _config(**fields):
  return ml_collections.ConfigDict(fields)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def _read_raw_idx(name):
  """Independent IDX reader: gunzip and skip the header (16 bytes for images, 8 for labels)."""
  with gzip.open(os.path.join(FASHION_SOURCE, name + ".gz"), "rb") as f:
    content = f.read()
  header = 16 if "images" in name else 8
  return np.frombuffer(content, np.uint8, offset=header)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST: the real 70,000 images, prepared offline.


@pytest.mark.parametrize("split,prefix,count", [("train", "train", 60000), ("test", "t10k", 10000)])
def test_prepared_fashion_mnist_equals_raw_idx(fashion_mnist_data_dir, split, prefix, count):
  builder = tfds.builder("fashion_mnist", data_dir=fashion_mnist_data_dir)
  assert builder.info.splits[split].num_examples == count
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  assert data["image"].shape == (count, 28, 28, 1) and data["image"].dtype == np.uint8
  images = _read_raw_idx(f"{prefix}-images-idx3-ubyte").reshape(count, 784)
  labels = _read_raw_idx(f"{prefix}-labels-idx1-ubyte")
  # TFDS stores examples in its own shuffled order: compare the multisets of (image, label).
  prepared = sorted(i.tobytes() + bytes([l]) for i, l in zip(data["image"].reshape(count, 784),
                                                             data["label"]))
  raw = sorted(i.tobytes() + bytes([l]) for i, l in zip(images, labels))
  assert prepared == raw


def test_prepare_reuses_prepared_data(fashion_mnist_data_dir, capsys):
  info_file = os.path.join(fashion_mnist_data_dir, "fashion_mnist", "3.0.1", "dataset_info.json")
  before = os.path.getmtime(info_file)
  fashion_mnist_local.prepare(fashion_mnist_data_dir)
  assert os.path.getmtime(info_file) == before
  assert "Preparing" not in capsys.readouterr().err


def test_fashion_mnist_normalization_matches_data():
  images = _read_raw_idx("train-images-idx3-ubyte") / 255.0
  assert images.mean() == pytest.approx(ip.FASHION_MNIST_MEAN[0], abs=1e-3)
  assert images.std() == pytest.approx(ip.FASHION_MNIST_STD[0], abs=1e-3)


def test_fashion_mnist_info():
  info = ip.dataset_info(_config(dataset="fashion_mnist"))
  assert (info.num_classes, info.image_shape) == (10, (28, 28, 1))
  assert (info.num_train_examples, info.num_eval_examples) == (60000, 10000)
  assert ip.steps_per_epoch(_config(dataset="fashion_mnist", batch_size=128), 1) == 468


def test_fashion_mnist_train_stream_is_deterministic_and_resumable(fashion_mnist_data_dir):
  # Host 1 of 4 reads 15,000 examples in per-host batches of 2,048: 7 steps per epoch, so steps
  # 5..8 cross into the second epoch.
  config = _config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir, batch_size=8192,
                   seed=7)
  host = dict(process_index=1, process_count=4)
  stream = _take(ip.create_train_iterator(config, **host), 9)
  for batch in stream:
    assert batch["image"].shape == (2048, 28, 28, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2048,) and batch["label"].dtype == np.int32
    assert batch["label"].min() >= 0 and batch["label"].max() < 10
    assert np.isfinite(batch["image"]).all()
  # Normalized pixels lie between (0 - mean) / std and (1 - mean) / std.
  lowest = -ip.FASHION_MNIST_MEAN[0] / ip.FASHION_MNIST_STD[0]
  highest = (1 - ip.FASHION_MNIST_MEAN[0]) / ip.FASHION_MNIST_STD[0]
  assert stream[0]["image"].min() == pytest.approx(lowest, abs=1e-5)
  assert stream[0]["image"].max() <= highest + 1e-5
  # Each epoch visits the host's examples in a new order: the label sequences differ.
  assert not np.array_equal(stream[0]["label"], stream[7]["label"])

  again = _take(ip.create_train_iterator(config, **host), 9)
  _assert_same_batches(stream, again)
  resumed = _take(ip.create_train_iterator(config, start_step=5, **host), 4)
  _assert_same_batches(stream[5:9], resumed)
  other_seed = next(ip.create_train_iterator(_config(**{**config.to_dict(), "seed": 8}), **host))
  assert not np.array_equal(other_seed["image"], stream[0]["image"])


def test_fashion_mnist_eval_covers_test_set_once(fashion_mnist_data_dir):
  config = _config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir, batch_size=8,
                   eval_batch_size=3000)
  batches = list(ip.create_eval_iterator(config, process_index=0, process_count=1))
  assert len(batches) == 4
  assert all(b["image"].shape == (3000, 28, 28, 1) for b in batches)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 10000 and (masks[:10000] == 1).all() and (masks[10000:] == 0).all()
  labels = np.concatenate([b["label"] for b in batches])[:10000]
  raw_labels = _read_raw_idx("t10k-labels-idx1-ubyte")
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(raw_labels))


# ----------------------------------------------------------------------------------------------
# ImageNet and CIFAR-10 on tfds.testing.mock_data with small, sliceable fake splits.

FAKE_SPLITS = {
    "imagenet2012": {"train": 20, "validation": 13},
    "cifar10": {"train": 50000, "test": 30},
}


def _fake_example(name, index, decoders):
  """Deterministic example `index`. ImageNet: a JPEG of varying size, label = index (an id);
  CIFAR-10: red and green spell the index (index % 256, index // 256) in every pixel, blue is
  random."""
  seed = tf.stack([index, tf.constant(17, tf.int64)])
  if name == "imagenet2012":
    height, width = 48 + index % 41, 64 + (index * 13) % 57
    image = tf.random.stateless_uniform(tf.stack([height, width, 3]), seed, 0, 256, tf.int32)
    jpeg = tf.io.encode_jpeg(tf.cast(image, tf.uint8))
    image = jpeg if decoders and "image" in decoders else tf.io.decode_jpeg(jpeg, channels=3)
    return {"image": image, "label": index}
  blue = tf.random.stateless_uniform([32, 32, 1], seed, 0, 256, tf.int32)
  ids = tf.cast(tf.stack([index % 256, index // 256]), tf.int32)
  image = tf.concat([tf.broadcast_to(ids, [32, 32, 2]), blue], axis=-1)
  return {"image": tf.cast(image, tf.uint8), "label": index % 10}


def _fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  """Replaces reading the TFDS files: honors sub-splits (even_splits, slices) like the real reader."""
  del read_config, shuffle_files, kwargs
  instructions = splits_lib.AbstractSplit.from_spec(split).to_absolute(self.info.splits)
  ds = None
  for instruction in instructions:
    end = instruction.to
    if end is None:
      end = self.info.splits[instruction.splitname].num_examples
    part = tf.data.Dataset.range(instruction.from_ or 0, end)
    ds = part if ds is None else ds.concatenate(part)
  return ds.map(lambda i: _fake_example(self.name, i, decoders))


@pytest.fixture(scope="module")
def fake_metadata_dir(tmp_path_factory):
  """A data_dir with TFDS metadata only: the true features, small split sizes."""
  data_dir = str(tmp_path_factory.mktemp("fake_tfds"))
  for name, sizes in FAKE_SPLITS.items():
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(splits_lib.SplitDict(
        [splits_lib.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
         for split, n in sizes.items()]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
  return data_dir


@pytest.fixture
def fake_tfds(fake_metadata_dir):
  """mock_data serving fake examples for the metadata's splits; yields the data_dir."""
  data_dir = fake_metadata_dir
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                              as_dataset_fn=_fake_as_dataset):
    yield data_dir


def _imagenet_bounds():
  mean, std = np.array(ip.IMAGENET_MEAN), np.array(ip.IMAGENET_STD)
  return -mean / std, (1 - mean) / std


@pytest.mark.parametrize("augmentation", ["paper", "inception"])
def test_imagenet_train_batches(fake_tfds, augmentation):
  config = _config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4, seed=1,
                   imagenet_train_augmentation=augmentation)
  batches = _take(ip.create_train_iterator(config, process_index=0, process_count=1), 6)
  low, high = _imagenet_bounds()
  for batch in batches:
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert (batch["image"] >= low - 1e-4).all() and (batch["image"] <= high + 1e-4).all()
  # 20 examples, 5 steps per epoch: an epoch shows each example once, the next one reshuffles.
  first_epoch = np.concatenate([b["label"] for b in batches[:5]])
  assert sorted(first_epoch) == list(range(20))
  resumed = _take(ip.create_train_iterator(config, start_step=4, process_index=0,
                                           process_count=1), 2)
  _assert_same_batches(batches[4:6], resumed)


def test_imagenet_train_hosts_read_disjoint_shards(fake_tfds):
  config = _config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4, seed=1)
  labels = []
  for process in range(2):
    # 10 examples per host, per-host batch 2: an epoch is 5 steps.
    batches = _take(ip.create_train_iterator(config, process_index=process, process_count=2), 5)
    assert all(b["image"].shape == (2, 224, 224, 3) for b in batches)
    labels.append(set(np.concatenate([b["label"] for b in batches]).tolist()))
  assert len(labels[0]) == len(labels[1]) == 10
  assert labels[0] | labels[1] == set(range(20)) and not labels[0] & labels[1]


@pytest.mark.parametrize("crop,shape", [("center", (224, 224, 3)), ("ten_crop", (10, 224, 224, 3))])
def test_imagenet_eval_covers_split_across_two_hosts(fake_tfds, crop, shape):
  # 13 validation examples over 2 hosts (7 + 6), per-host batch 2: 4 batches on both hosts.
  config = _config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4, eval_batch_size=4,
                   imagenet_eval_crop=crop)
  seen = []
  counts = []
  for process in range(2):
    batches = list(ip.create_eval_iterator(config, process_index=process, process_count=2))
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
  config = _config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=2,
                   imagenet_eval_crop="ten_crop")
  images = next(ip.create_eval_iterator(config, process_index=0, process_count=1))["image"]
  np.testing.assert_array_equal(images[:, 5:], images[:, :5, :, ::-1])
  low, high = _imagenet_bounds()
  assert (images >= low - 1e-4).all() and (images <= high + 1e-4).all()
  # The four corners and the center are different windows.
  assert len({crop.tobytes() for crop in images[0, :5]}) == 5


def _cifar_source(index):
  example = _fake_example("cifar10", tf.constant(index, tf.int64), None)
  return example["image"].numpy()


def _denormalize_cifar(images):
  mean, std = np.array(ip.CIFAR10_MEAN), np.array(ip.CIFAR10_STD)
  return np.round((images * std + mean) * 255).astype(np.int64)


def _cifar_ids(images):
  """Example ids of denormalized CIFAR fakes, read at the center (inside any 4-pixel shift)."""
  return images[:, 16, 16, 0] + 256 * images[:, 16, 16, 1]


@pytest.mark.parametrize("cache", [True, False])
def test_cifar_train_is_pad_crop_flip_of_the_source(fake_tfds, cache):
  # Host 3 of 8 (6,250 of the 50,000 fake examples), per-host batch 64.
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=512, seed=3, cache=cache,
                   shuffle_buffer_size=256)
  host = dict(process_index=3, process_count=8)
  batches = _take(ip.create_train_iterator(config, **host), 2)
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
  resumed = next(ip.create_train_iterator(config, start_step=1, **host))
  _assert_same_batches(batches[1:], [resumed])


def test_crop_padding_zero_leaves_flips_only(fake_tfds):
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=64, crop_padding=0)
  batch = next(ip.create_train_iterator(config, process_index=0, process_count=1))
  images = _denormalize_cifar(batch["image"])
  flipped = []
  for image, index in zip(images, _cifar_ids(images)):
    source = _cifar_source(index)
    assert np.array_equal(image, source) or np.array_equal(image, source[:, ::-1])
    flipped.append(not np.array_equal(image, source))
  assert 0 < sum(flipped) < len(flipped)


def _single_rectangle(mask):
  """(height, width) of the one axis-aligned rectangle that `mask` (H, W) holds, else None."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if not rows.size:
    return None
  height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
  assert mask.sum() == height * width and mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
  return height, width


def test_random_erase_replaces_one_rectangle_of_noise():
  images = tf.fill([512, 28, 28, 3], 7.0)  # 7: not a plausible standard normal draw
  seed = tf.constant([4, 2])
  erased = ip.random_erase(images, seed, 0.5).numpy()
  np.testing.assert_array_equal(erased, ip.random_erase(images, seed, 0.5).numpy())
  changed = erased != 7.0
  assert (changed.all(axis=-1) == changed.any(axis=-1)).all()  # every channel of a pixel
  shapes = [_single_rectangle(mask) for mask in changed.any(axis=-1)]
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
  np.testing.assert_array_equal(ip.random_erase(images, seed, 0.0).numpy(), images.numpy())
  assert all(s is not None for s in map(_single_rectangle,
                                        (ip.random_erase(images, seed, 1.0).numpy() != 7.0)
                                        .any(axis=-1)))


@pytest.mark.parametrize("cache", [True, False])
def test_random_erasing_keeps_the_crops_and_flips_it_erases_over(fake_tfds, cache):
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=64, seed=1, cache=cache,
                   shuffle_buffer_size=256)
  plain = next(ip.create_train_iterator(config, process_index=0, process_count=1))
  config.random_erasing = 1.0
  erased = next(ip.create_train_iterator(config, process_index=0, process_count=1))
  np.testing.assert_array_equal(erased["label"], plain["label"])
  changed = (erased["image"] != plain["image"]).any(axis=-1)
  for mask in changed:  # The same augmented image, up to one erased rectangle.
    assert _single_rectangle(mask) is not None


def test_cifar_eval_is_the_original_image(fake_tfds):
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=16)
  batches = list(ip.create_eval_iterator(config, process_index=0, process_count=1))
  assert len(batches) == 2 and batches[-1]["mask"].sum() == 14
  images = _denormalize_cifar(np.concatenate([b["image"] for b in batches]))
  for index in range(30):
    np.testing.assert_array_equal(images[index], _cifar_source(index))
  assert (images[30:] == _denormalize_cifar(np.zeros(3))).all()  # Padding: zeros after scaling.


def test_eval_flip_adds_the_mirror_as_a_second_view(fake_tfds):
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=16, eval_flip=True)
  batches = list(ip.create_eval_iterator(config, process_index=0, process_count=1))
  assert [b["image"].shape for b in batches] == [(16, 2, 32, 32, 3)] * 2
  assert batches[-1]["mask"].sum() == 14
  images = _denormalize_cifar(np.concatenate([b["image"] for b in batches]))
  for index in range(30):
    np.testing.assert_array_equal(images[index, 0], _cifar_source(index))
    np.testing.assert_array_equal(images[index, 1], _cifar_source(index)[:, ::-1])


def test_cifar_validation_split_holds_out_last_5000(fake_tfds):
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=8, eval_batch_size=2000,
                   cifar_validation_split=True)
  info = ip.dataset_info(config)
  assert (info.num_train_examples, info.num_eval_examples) == (45000, 5000)
  ids = []
  for process in range(2):
    for batch in ip.create_eval_iterator(config, process_index=process, process_count=2):
      ids.extend(_cifar_ids(_denormalize_cifar(batch["image"][batch["mask"] == 1])).tolist())
  assert sorted(ids) == list(range(45000, 50000))


@pytest.mark.parametrize("validation", [False, True])
def test_eval_examples_keeps_the_first_of_the_split_across_two_hosts(fake_tfds, validation):
  config = _config(dataset="cifar10", data_dir=fake_tfds, batch_size=8, eval_batch_size=4,
                   cifar_validation_split=validation, eval_examples=11)
  info = ip.dataset_info(config)
  first = 45000 if validation else 0
  assert info.num_eval_examples == 11
  assert info.eval_split == (f"train[{first}:{first + 11}]" if validation else "test[0:11]")
  ids = []
  for process in range(2):
    for batch in ip.create_eval_iterator(config, process_index=process, process_count=2):
      ids.extend(_cifar_ids(_denormalize_cifar(batch["image"][batch["mask"] == 1])).tolist())
  assert sorted(ids) == list(range(first, first + 11))
  # More than the split holds, or 0: the whole split.
  for limit in (0, 10**6):
    whole = ip.dataset_info(_config(**{**config.to_dict(), "eval_examples": limit}))
    assert whole.num_eval_examples == (5000 if validation else 10000)  # TFDS's test split


# ----------------------------------------------------------------------------------------------
# Errors a user can fix.


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'.*cifar10"):
    ip.dataset_info(_config(dataset="mnist"))


def test_missing_data_dir(tmp_path):
  config = _config(dataset="cifar10", data_dir=str(tmp_path / "nowhere"), batch_size=8)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ip.create_train_iterator(config, process_index=0, process_count=1)


def test_imagenet_without_manual_download(tmp_path):
  config = _config(dataset="imagenet2012", data_dir=str(tmp_path), batch_size=8)
  with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar.*tfds build imagenet2012"):
    ip.create_eval_iterator(config, process_index=0, process_count=1)


def test_imagenet_does_not_fit_in_memory(fake_tfds):
  config = _config(dataset="imagenet2012", data_dir=fake_tfds, batch_size=4, cache=True)
  with pytest.raises(ValueError, match="set config.cache=False"):
    ip.create_train_iterator(config, process_index=0, process_count=1)


def test_fashion_mnist_source_dir_without_idx_files(tmp_path):
  config = _config(dataset="fashion_mnist", data_dir=str(tmp_path), batch_size=8,
                   fashion_mnist_source_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    ip.create_train_iterator(config, process_index=0, process_count=1)


def test_batch_not_divisible_by_process_count(fashion_mnist_data_dir):
  config = _config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir, batch_size=10)
  with pytest.raises(ValueError, match="multiple of the process count 3"):
    ip.create_train_iterator(config, process_index=0, process_count=3)
