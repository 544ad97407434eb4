"""Faults met inside one run, through `train_and_evaluate` in this process (no train.py): no
completed step's metrics are lost, a failed checkpoint save stops the run with one error
and leaves no thread behind, a workdir belongs to one run at a time."""

import json

import pytest

import flax_resnet
from train_utils import records


def tiny_config(data_dir, **overrides):
  """Fashion-MNIST on a 4-wide CIFAR ResNet-20: a few steps take seconds."""
  config = flax_resnet.default_config()
  config.update(dict(model="cifar_resnet20", widths=(4, 4, 4), dataset="fashion_mnist",
                     data_dir=data_dir, batch_size=32, eval_batch_size=256, eval_examples=256,
                     num_train_steps=20, log_every_steps=5, eval_every_steps=7,
                     checkpoint_every_steps=6, warmup_epochs=0.0, lr_decay_epochs=(),
                     plot=False, shuffle_buffer_size=1024))
  config.update(overrides)
  return config


def test_every_step_counts_in_one_training_record(tmp_path, fashion_mnist_data_dir):
  """A flush before an evaluation or a checkpoint writes the steps since the last log line;
  with log 5, eval 7, checkpoint 6 the training records fall at each of those steps."""
  flax_resnet.train_and_evaluate(tiny_config(fashion_mnist_data_dir), str(tmp_path))
  train = [r["step"] for r in records(tmp_path) if "train_loss" in r]
  assert train == sorted({s for s in range(1, 21) if s % 5 == 0 or s % 7 == 0 or s % 6 == 0}
                         | {20})
  evals = [r["step"] for r in records(tmp_path) if "eval_accuracy" in r]
  assert evals == [7, 14, 20]
