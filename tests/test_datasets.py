"""What a dataset is and whether it is usable: Fashion-MNIST prepared offline from Debian's IDX
files, dataset_info and steps_per_epoch, the normalization statistics, and check_data's one
clear error for each problem a user can cause with data, before anything is written."""

import gzip
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import flax_resnet
from data_utils import make_config
from flax_resnet import inference
from flax_resnet.config import check_config
from flax_resnet.data import catalog, datasets, fashion_mnist, pipeline, statistics
from flax_resnet.errors import ConfigError, DataError

FASHION_SOURCE = fashion_mnist.DEFAULT_SOURCE_DIR
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_raw_idx(name):
  """Independent IDX reader: gunzip and skip the header (16 bytes for images, 8 for labels)."""
  with gzip.open(os.path.join(FASHION_SOURCE, name + ".gz"), "rb") as f:
    content = f.read()
  header = 16 if "images" in name else 8
  return np.frombuffer(content, np.uint8, offset=header)


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST: the real 70,000 images, prepared offline.


@pytest.mark.parametrize("split,prefix,count", [("train", "train", 60000), ("test", "t10k", 10000)])
@pytest.mark.slow
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


@pytest.mark.slow
def test_prepare_reuses_prepared_data(fashion_mnist_data_dir, capsys):
  info_file = os.path.join(fashion_mnist_data_dir, "fashion_mnist", "3.0.1", "dataset_info.json")
  before = os.path.getmtime(info_file)
  fashion_mnist.prepare(fashion_mnist_data_dir)
  assert os.path.getmtime(info_file) == before
  assert "Preparing" not in capsys.readouterr().err


def test_fashion_mnist_normalization_matches_data():
  images = _read_raw_idx("train-images-idx3-ubyte") / 255.0
  assert images.mean() == pytest.approx(statistics.FASHION_MNIST_MEAN[0], abs=1e-3)
  assert images.std() == pytest.approx(statistics.FASHION_MNIST_STD[0], abs=1e-3)


def test_inference_and_the_package_use_the_one_imagenet_statistics():
  assert inference.IMAGENET_MEAN is statistics.IMAGENET_MEAN is flax_resnet.IMAGENET_MEAN
  assert inference.IMAGENET_STD is statistics.IMAGENET_STD is flax_resnet.IMAGENET_STD
  assert catalog.DATASETS["imagenet2012"].mean is statistics.IMAGENET_MEAN
  # Inference stays free of TensorFlow.
  code = "import sys, flax_resnet.inference; assert 'tensorflow' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                 env={**os.environ, "PYTHONPATH": REPO}, timeout=300)


# ----------------------------------------------------------------------------------------------
# dataset_info and steps_per_epoch.


def test_fashion_mnist_info():
  info = datasets.dataset_info(make_config(dataset="fashion_mnist"))
  assert (info.num_classes, info.image_shape) == (10, (28, 28, 1))
  assert (info.num_train_examples, info.num_eval_examples) == (60000, 10000)
  assert datasets.steps_per_epoch(make_config(dataset="fashion_mnist", batch_size=128), 1) == 468
  # Each of 4 hosts: 15,000 examples in per-host batches of 32.
  assert datasets.steps_per_epoch(make_config(dataset="fashion_mnist", batch_size=128),
                                  process_count=4) == 468


def test_imagenet_info_follows_image_size():
  info = datasets.dataset_info(make_config(image_size=160))
  assert (info.num_classes, info.image_shape, info.eval_split) == (1000, (160, 160, 3),
                                                                   "validation")
  assert datasets.steps_per_epoch(make_config(batch_size=1024), 1) == 1251


def test_steps_per_epoch_is_at_least_one():
  config = make_config(dataset="cifar10", batch_size=65536, num_train_steps=10)
  assert datasets.steps_per_epoch(config, 1) == 1


def test_check_config_knows_the_datasets():
  config = make_config(dataset="mnist")
  with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*cifar10"):
    check_config(config)
  check_config(make_config(dataset="image_folder"))


# ----------------------------------------------------------------------------------------------
# check_data: one DataError (or ConfigError) per problem, no TFDS warning, nothing written.


def _assert_no_tfds_warning(capfd, caplog):
  out, err = capfd.readouterr()
  logged = "\n".join(record.getMessage() for record in caplog.records)
  for text in (out, err, logged):
    assert "dataset_info.json" not in text and "Variant folder" not in text
    assert "WARNING" not in text


@pytest.mark.parametrize("dataset", ["cifar10", "image_folder"])
def test_data_dir_that_is_a_file(tmp_path, capfd, caplog, dataset):
  caplog.set_level(logging.INFO)
  a_file = tmp_path / "data.txt"
  a_file.write_text("not a folder")
  with pytest.raises(DataError, match=f"^config.data_dir='{a_file}' is a file, not a folder"):
    datasets.check_data(make_config(dataset=dataset, data_dir=str(a_file)), process_count=1)
  _assert_no_tfds_warning(capfd, caplog)


@pytest.mark.parametrize("dataset", ["imagenet2012", "image_folder"])
def test_missing_data_dir(tmp_path, capfd, caplog, dataset):
  caplog.set_level(logging.INFO)
  nowhere = tmp_path / "nowhere"
  config = make_config(dataset=dataset, data_dir=str(nowhere))
  with pytest.raises(DataError, match=f"^config.data_dir='{nowhere}' does not exist"):
    datasets.check_data(config, process_count=1)
  _assert_no_tfds_warning(capfd, caplog)
  with pytest.raises(DataError, match="does not exist"):  # The iterators say the same.
    pipeline.create_train_iterator(config, process_index=0, process_count=1)
  assert not nowhere.exists()


def test_unprepared_imagenet(tmp_path, capfd, caplog):
  caplog.set_level(logging.INFO)
  config = make_config(dataset="imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(DataError, match=f"^ImageNet \\(imagenet2012\\) is not prepared in {tmp_path}"
                                      ".*ILSVRC2012_img_train.tar.*tfds build imagenet2012"):
    datasets.check_data(config, process_count=1)
  _assert_no_tfds_warning(capfd, caplog)
  assert os.listdir(tmp_path) == []  # Nothing written.
  with pytest.raises(DataError, match="ILSVRC2012_img_train.tar"):
    pipeline.create_eval_iterator(config, process_index=0, process_count=1)


def _image_folder(root):
  for split in ("train", "val"):
    for name in ("a", "b"):
      os.makedirs(root / split / name)
      for i in range(2):
        Image.new("RGB", (12, 10), (40 * i, 90, 9)).save(root / split / name / f"{i}.png")
  return root


def test_image_folder_with_an_unreadable_file(tmp_path, capfd, caplog):
  caplog.set_level(logging.INFO)
  root = _image_folder(tmp_path / "images")
  config = make_config(dataset="image_folder", data_dir=str(root), batch_size=2)
  datasets.check_data(config, process_count=1)
  bad = root / "val" / "b" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff not really a JPEG")
  capfd.readouterr()
  with pytest.raises(DataError, match=f"^{bad} is not a readable image .*; remove or replace it"):
    datasets.check_data(config, process_count=1)
  _assert_no_tfds_warning(capfd, caplog)


def test_image_folder_with_a_wrong_layout(tmp_path):
  os.makedirs(tmp_path / "cats")
  with pytest.raises(DataError, match="has no 'train' folder"):
    datasets.check_data(make_config(dataset="image_folder", data_dir=str(tmp_path)), 1)
  with pytest.raises(ConfigError, match="needs config.data_dir"):
    datasets.check_data(make_config(dataset="image_folder"), 1)


@pytest.mark.slow
def test_prepared_data_passes(fashion_mnist_data_dir, tmp_path):
  datasets.check_data(make_config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir,
                                  batch_size=128, cache=True), process_count=2)
  root = _image_folder(tmp_path / "images")
  datasets.check_data(make_config(dataset="image_folder", data_dir=str(root), batch_size=4),
                      process_count=1)


@pytest.mark.slow
def test_batch_larger_than_a_hosts_data(fashion_mnist_data_dir, tmp_path):
  config = make_config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir, batch_size=65536)
  message = "per-host batch 8192 is larger than this host's 7500 training examples"
  with pytest.raises(DataError, match=message):
    datasets.check_data(config, process_count=8)
  with pytest.raises(DataError, match=message):
    pipeline.create_train_iterator(config, process_index=0, process_count=8)
  root = _image_folder(tmp_path / "images")
  with pytest.raises(DataError, match="per-host batch 8 is larger than this host's 4 training"):
    datasets.check_data(make_config(dataset="image_folder", data_dir=str(root), batch_size=8),
                        process_count=1)


@pytest.mark.slow
def test_batch_not_divisible_by_process_count(fashion_mnist_data_dir):
  config = make_config(dataset="fashion_mnist", data_dir=fashion_mnist_data_dir, batch_size=10)
  with pytest.raises(ConfigError, match="config.batch_size=10 does not divide over the 3 "
                                        "processes"):
    datasets.check_data(config, process_count=3)
  with pytest.raises(ConfigError, match="does not divide over the 3 processes"):
    pipeline.create_train_iterator(config, process_index=0, process_count=3)


@pytest.mark.parametrize("dataset,why", [("imagenet2012", "does not fit in host memory"),
                                         ("image_folder", "read from their files every epoch")])
def test_cache_where_the_split_cannot_be_held(tmp_path, dataset, why):
  config = make_config(dataset=dataset, data_dir=str(tmp_path), cache=True)
  message = f"cache=True is not supported for {dataset} \\(.*{why}\\)"
  with pytest.raises(ConfigError, match=message):
    datasets.check_data(config, process_count=1)
  with pytest.raises(ConfigError, match="set config.cache=False"):
    pipeline.create_train_iterator(config, process_index=0, process_count=1)


def test_fashion_mnist_source_dir_without_idx_files(tmp_path):
  config = make_config(dataset="fashion_mnist", data_dir=str(tmp_path),
                       fashion_mnist_source_dir=str(tmp_path / "idx"))
  with pytest.raises(DataError, match=f"IDX files not found in {tmp_path}/idx.*"
                                      "dataset-fashion-mnist"):
    datasets.check_data(config, process_count=1)
