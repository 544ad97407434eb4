"""Helpers of the tests that run train.py as a user does."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_command(workdir, data_dir, *flags):
  return [sys.executable, "train.py", "--config=configs/fashion_mnist.py",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", *flags]


def train_env(devices=8, **extra):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              PYTHONUNBUFFERED="1", **extra)


def run_train(workdir, data_dir, *flags, devices=8):
  return subprocess.run(train_command(workdir, data_dir, *flags), cwd=ROOT,
                        env=train_env(devices), capture_output=True, text=True, timeout=600)


def records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def saved_state(workdir, step):
  """The raw saved train state of `step`, as numpy arrays."""
  from flax_resnet.checkpointing import read_state
  return read_state(os.path.join(workdir, "checkpoints"), step)


def assert_trees_equal(a, b):
  import jax
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def write_checkpoint(workdir, model_name, image_shape, dataset, **fields):
  """A checkpoint at step 0 of a freshly initialized `model_name` (ResNet `fields` overridden)
  in WORKDIR/checkpoints, with the meta a run on `dataset` records; returns the state."""
  import jax
  import optax
  import flax_resnet
  from flax_resnet.checkpointing import Checkpointer
  from flax_resnet.step import create_train_state
  model = flax_resnet.create_model(model_name, **fields)
  state = create_train_state(model, optax.sgd(0.1), image_shape, jax.random.key(0))
  config = flax_resnet.default_config()
  config.update(model=model_name, dataset=dataset)
  if "widths" in fields:
    config.widths = tuple(fields["widths"])
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  checkpointer.save(0, state, {"model": model_name, "widths": list(model.widths),
                               "dataset": dataset, "num_classes": model.num_classes,
                               "image_shape": list(image_shape), "config": config.to_dict()})
  checkpointer.close()
  return jax.device_get(state)
