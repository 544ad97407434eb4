"""image_folder: a tiny folder of PNG and JPEG files written with PIL. Each source image is one
colour: red says its class, green its id, so a preprocessed pixel tells which file it came from."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_utils import assert_same_batches, make_config, take
from flax_resnet.data import datasets, image_folder, pipeline
from flax_resnet.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from flax_resnet.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ant", "bee", "cat")
PER_CLASS = {"train": 6, "val": 3}


def _colour(label, image_id):
  return (40 + 80 * label, 5 + 9 * image_id, 128)


def _write_image(path, colour, size=(40, 50)):
  """A one-colour image, as PNG or JPEG by the file's extension."""
  Image.new("RGB", (size[1], size[0]), colour).save(path)


def _make_folder(root, splits=PER_CLASS, classes=CLASSES):
  image_id = 0
  for split, count in splits.items():
    for label, name in enumerate(classes):
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        extension = "png" if i % 2 else "jpg"
        _write_image(os.path.join(root, split, name, f"{i:02d}.{extension}"),
                     _colour(label, image_id))
        image_id += 1
  return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """3 classes: 18 train images (ids 0..17) and 9 val images (ids 18..26), 40 x 50 pixels."""
  return _make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture
def fresh_folder(tmp_path):
  """A copy of the layout to damage."""
  return _make_folder(tmp_path / "images")


def _config(data_dir, **fields):
  defaults = dict(dataset="image_folder", data_dir=data_dir, image_size=32, batch_size=3,
                  eval_batch_size=4, seed=0)
  return make_config(**{**defaults, **fields})


def _source_colour(images):
  """Denormalized centre pixels (N, 3) of preprocessed images."""
  mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
  return (images[:, 16, 16] * std + mean) * 255


def _labels_and_ids(images):
  colour = _source_colour(images)
  return (np.round((colour[:, 0] - 40) / 80).astype(int),
          np.round((colour[:, 1] - 5) / 9).astype(int))


def test_info_comes_from_the_folders(folder):
  info = datasets.dataset_info(_config(folder))
  assert (info.num_classes, info.image_shape) == (3, (32, 32, 3))
  assert (info.num_train_examples, info.num_eval_examples) == (18, 9)
  assert (info.train_split, info.eval_split) == ("train", "val")
  # (18 // 2) // 2
  assert datasets.steps_per_epoch(_config(folder, batch_size=4), process_count=2) == 4
  scanned = image_folder.scan(folder)
  assert scanned.classes == CLASSES
  assert list(scanned.train.labels) == [0] * 6 + [1] * 6 + [2] * 6


def test_test_folder_is_the_eval_split(tmp_path):
  root = _make_folder(tmp_path, {"train": 2, "test": 1}, classes=("b", "a"))
  info = datasets.dataset_info(_config(root))
  assert (info.eval_split, info.num_eval_examples, info.num_classes) == ("test", 2, 2)
  assert image_folder.scan(root).classes == ("a", "b")  # Sorted names, as torchvision's.


@pytest.mark.parametrize("augmentation", ["paper", "inception"])
def test_train_stream_is_deterministic_resumable_and_labelled(folder, augmentation):
  config = _config(folder, seed=5, imagenet_train_augmentation=augmentation)
  host = dict(process_index=0, process_count=1)
  stream = take(pipeline.create_train_iterator(config, **host), 8)  # 6 steps per epoch
  for batch in stream:
    assert batch["image"].shape == (3, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    labels, ids = _labels_and_ids(batch["image"])
    np.testing.assert_array_equal(batch["label"], labels)
    np.testing.assert_array_equal(labels, ids // 6)
  first_epoch = np.concatenate([_labels_and_ids(b["image"])[1] for b in stream[:6]])
  assert sorted(first_epoch) == list(range(18))
  assert not np.array_equal(stream[0]["label"], stream[6]["label"]) or not np.array_equal(
      stream[1]["label"], stream[7]["label"])  # The next epoch reshuffles.
  assert_same_batches(stream, take(pipeline.create_train_iterator(config, **host), 8))
  resumed = take(pipeline.create_train_iterator(config, start_step=5, **host), 3)
  assert_same_batches(stream[5:], resumed)
  other = take(pipeline.create_train_iterator(_config(folder, seed=6), **host), 6)
  assert [b["label"].tolist() for b in other] != [b["label"].tolist() for b in stream[:6]]


def test_train_hosts_read_disjoint_shards(folder):
  config = _config(folder, batch_size=6)
  ids = []
  for process in range(2):
    batches = take(pipeline.create_train_iterator(config, process_index=process,
                                                  process_count=2), 3)
    assert all(b["image"].shape == (3, 32, 32, 3) for b in batches)
    ids.append(set(np.concatenate([_labels_and_ids(b["image"])[1] for b in batches]).tolist()))
  assert len(ids[0]) == len(ids[1]) == 9
  assert ids[0] | ids[1] == set(range(18)) and not ids[0] & ids[1]


def test_augmentation_crops_and_flips(tmp_path):
  """A horizontal ramp: random crops and flips give different images of the same file."""
  for split in ("train", "val"):
    os.makedirs(tmp_path / split / "ramp")
    ramp = np.broadcast_to(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (48, 64, 3))
    Image.fromarray(np.ascontiguousarray(ramp)).save(tmp_path / split / "ramp" / "0.png")
  config = _config(str(tmp_path), batch_size=1)
  images = np.concatenate([b["image"] for b in take(
      pipeline.create_train_iterator(config, process_index=0, process_count=1), 8)])
  assert len({image.tobytes() for image in images}) == 8
  slopes = np.sign(images[:, 16, -1, 0] - images[:, 16, 0, 0])
  assert set(slopes.tolist()) == {-1.0, 1.0}  # Some are mirrored.
  mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
  assert (images >= -mean / std - 1e-4).all() and (images <= (1 - mean) / std + 1e-4).all()


@pytest.mark.parametrize("crop,shape", [("center", (32, 32, 3)), ("ten_crop", (10, 32, 32, 3))])
def test_eval_covers_the_split_once_across_two_hosts(folder, crop, shape):
  # 9 val images over 2 hosts (5 + 4), per-host batch 2: 3 batches on both hosts.
  config = _config(folder, imagenet_eval_crop=crop)
  seen, counts = [], []
  for process in range(2):
    batches = list(pipeline.create_eval_iterator(config, process_index=process, process_count=2))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (2, *shape) and batch["mask"].dtype == np.float32
      real = batch["mask"] == 1
      assert (batch["image"][~real] == 0).all()
      images = batch["image"][real]
      images = images[:, 4] if crop == "ten_crop" else images  # the centre crop
      labels, ids = _labels_and_ids(images)
      np.testing.assert_array_equal(batch["label"][real], labels)
      seen.extend(ids.tolist())
  assert counts == [3, 3]
  assert sorted(seen) == list(range(18, 27))


def test_eval_examples_spreads_over_the_classes(folder):
  config = _config(folder, eval_examples=5)
  assert datasets.dataset_info(config).num_eval_examples == 5
  labels = []
  for process in range(2):
    for batch in pipeline.create_eval_iterator(config, process_index=process, process_count=2):
      labels.extend(batch["label"][batch["mask"] == 1].tolist())
  assert sorted(labels) == [0, 0, 1, 2, 2]  # val ids 18, 20 | 22 | 24, 26: every class


def test_eval_pixels_are_the_source_colour_imagenet_normalized(folder):
  batch = next(pipeline.create_eval_iterator(_config(folder), process_index=0, process_count=1))
  colour = _source_colour(batch["image"])
  np.testing.assert_allclose(colour[0], _colour(0, 18), atol=3)  # JPEG: a little off
  np.testing.assert_allclose(colour[1], _colour(0, 19), atol=1e-3)  # PNG: exact


# ----------------------------------------------------------------------------------------------
# Errors a user can fix: one message each.


def test_missing_data_dir(tmp_path):
  with pytest.raises(DataError, match="nowhere.* does not exist"):
    datasets.dataset_info(_config(str(tmp_path / "nowhere")))
  with pytest.raises(ConfigError, match="needs config.data_dir"):
    datasets.dataset_info(_config(None))


def test_no_train_folder(tmp_path):
  os.makedirs(tmp_path / "val" / "a")
  with pytest.raises(DataError, match="has no 'train' folder.*<class name>"):
    pipeline.create_train_iterator(_config(str(tmp_path)), process_index=0, process_count=1)


def test_no_eval_folder(fresh_folder):
  shutil.rmtree(os.path.join(fresh_folder, "val"))
  with pytest.raises(DataError, match="no 'val' \\(or 'test'\\) folder"):
    datasets.dataset_info(_config(fresh_folder))


def test_empty_class_folder(fresh_folder):
  empty = os.path.join(fresh_folder, "train", "dog")
  os.makedirs(empty)
  with open(os.path.join(empty, "notes.txt"), "w") as f:
    f.write("not an image extension: ignored")
  with pytest.raises(DataError, match=f"class folder {empty} holds no images"):
    datasets.dataset_info(_config(fresh_folder))


def test_eval_class_missing_from_train(fresh_folder):
  os.rename(os.path.join(fresh_folder, "val", "cat"), os.path.join(fresh_folder, "val", "cow"))
  with pytest.raises(DataError, match=r"class folder\(s\) \['cow'\] that .*train lacks"):
    datasets.dataset_info(_config(fresh_folder))


def _truncated_jpeg():
  noise = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(noise).save(buffer, "JPEG")
  return buffer.getvalue()[:buffer.tell() // 2]


BAD_FILES = {"text": b"This is a text file, not a JPEG.\n", "truncated": _truncated_jpeg()}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("check", ["auto", "header", "lazy"])
def test_bad_image_is_named(fresh_folder, kind, check):
  bad = os.path.join(fresh_folder, "train", "bee", "zz_bad.jpg")
  with open(bad, "wb") as f:
    f.write(BAD_FILES[kind])
  config = _config(fresh_folder, batch_size=19, image_folder_check=check)
  message = f"^{bad} is not a readable image .*; remove or replace it.$"
  if check == "header" and kind == "truncated":  # Its header is fine: found while decoding.
    check = "lazy"
  with pytest.raises(DataError, match=message) as error:
    # 19 files, one batch per epoch: the bad file is in the first batch.
    next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  assert error.value.__cause__ is None and error.value.__suppress_context__ == (check == "lazy")


def test_bad_eval_image_found_while_evaluating(fresh_folder):
  bad = os.path.join(fresh_folder, "val", "ant", "01.png")
  with open(bad, "wb") as f:
    f.write(BAD_FILES["truncated"])
  config = _config(fresh_folder, image_folder_check="lazy")
  with pytest.raises(DataError, match=f"^{bad} is not a readable image"):
    list(pipeline.create_eval_iterator(config, process_index=0, process_count=1))


def test_several_bad_images_in_one_message(fresh_folder):
  bad = [os.path.join(fresh_folder, "val", "cat", f"bad{i}.png") for i in range(7)]
  for path in bad:
    open(path, "wb").close()
  with pytest.raises(DataError, match=f"7 files are not readable images: {bad[0]} \\(the file is "
                                       "empty\\);.* and 2 more; remove or replace them"):
    pipeline.create_eval_iterator(_config(fresh_folder), process_index=0, process_count=1)


def test_cache_is_refused(folder):
  with pytest.raises(ConfigError, match="set config.cache=False"):
    pipeline.create_train_iterator(_config(folder, cache=True), process_index=0, process_count=1)


# ----------------------------------------------------------------------------------------------
# train.py end to end.


def _train(data_dir, workdir):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
      [sys.executable, "train.py", "--config=configs/fashion_mnist.py", f"--workdir={workdir}",
       "--config.dataset=image_folder", f"--config.data_dir={data_dir}",
       "--config.image_size=32", "--config.num_train_steps=2", "--config.batch_size=8",
       "--config.eval_batch_size=8", "--config.log_every_steps=1", "--config.cache=False",
       "--config.plot=False"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_py_names_a_corrupt_image_then_trains(fresh_folder, tmp_path):
  bad = os.path.join(fresh_folder, "train", "ant", "corrupt.jpg")
  with open(bad, "wb") as f:
    f.write(BAD_FILES["truncated"])
  failed = _train(fresh_folder, tmp_path / "failed")
  assert failed.returncode == 1, failed.stderr
  assert f"error: {bad} is not a readable image" in failed.stderr
  assert "remove or replace it" in failed.stderr and "Traceback" not in failed.stderr

  os.remove(bad)
  done = _train(fresh_folder, tmp_path / "done")
  assert done.returncode == 0, done.stderr
  assert "final: eval accuracy" in done.stdout
