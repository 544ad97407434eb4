"""A run worked out before anything is written: the config, the data and the devices checked,
and the figures the training loop runs by.

`plan_run(config, devices)` is the one place where a config meets the data and the devices:
it raises the project's ConfigError or DataError for a run that cannot go as configured, and
otherwise returns a `RunPlan` (the dataset's facts, computed once, the data-parallel mapping,
the number of classes, steps per epoch and the step counts of the schedule).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax_resnet import optim
from flax_resnet.config import check_config
from flax_resnet.errors import ConfigError, DataError
from flax_resnet.parallel import DataParallel


@dataclasses.dataclass(frozen=True)
class RunPlan:
  info: Any                # data.datasets.DatasetInfo of config.dataset
  parallel: DataParallel
  num_classes: int         # config.num_classes, or the dataset's where 0
  steps_per_epoch: int
  num_train_steps: int
  eval_every: int          # steps between evaluations
  checkpoint_every: int    # steps between checkpoints
  notes: tuple[str, ...] = ()  # what the run will not do as the config may suggest


def plan_run(config, devices=None) -> RunPlan:
  """Checks `config` (check_config), its data (datasets.check_data) and its batch sizes
  against the devices, in that order, and works out the run's figures."""
  from flax_resnet.data import datasets  # imports TensorFlow: only when training

  check_config(config)
  info = datasets.check_data(config)
  check_classes(config, info)
  parallel = DataParallel(config.parallelism, devices)
  parallel.check_batch_size(config.batch_size, "batch_size", config.grad_accum_steps)
  parallel.check_batch_size(config.eval_batch_size or config.batch_size,
                            "eval_batch_size" if config.eval_batch_size else "batch_size")
  steps_per_epoch = datasets.steps_per_epoch(config, info=info)
  num_train_steps = (config.num_train_steps if config.num_train_steps > 0
                     else int(round(config.num_epochs * steps_per_epoch)))
  return RunPlan(info=info, parallel=parallel,
                 num_classes=config.num_classes or info.num_classes,
                 steps_per_epoch=steps_per_epoch, num_train_steps=num_train_steps,
                 eval_every=config.eval_every_steps or steps_per_epoch,
                 checkpoint_every=config.checkpoint_every_steps or steps_per_epoch,
                 notes=tuple(optim.schedule_notes(config, steps_per_epoch, num_train_steps)))


def check_classes(config, info) -> None:
  """A dataset of one class cannot train a classifier (it scores 100% by construction), and
  config.num_classes below the dataset's leaves its higher labels without an output (their
  one-hot targets all zero): both refused."""
  if info.num_classes < 2:
    where = f" in {config.data_dir}" if config.dataset == "image_folder" else ""
    raise DataError(f"{config.dataset}{where} has {info.num_classes} class; a classifier needs "
                    "at least 2 (an image folder: one subfolder per class in each split)")
  if config.num_classes and config.num_classes < info.num_classes:
    raise ConfigError(f"config.num_classes={config.num_classes} is below the "
                      f"{info.num_classes} classes of {config.dataset}: labels "
                      f"{config.num_classes} to {info.num_classes - 1} would have no output; "
                      f"set 0 (the dataset's) or at least {info.num_classes}")
