"""What a checkpoint records about its run, and what a run that resumes from it may change.

Every checkpoint's `meta` item holds the run's identity (`run_identity`: model, widths,
dataset, classes, image shape and the whole config). A run that finds checkpoints in its
workdir compares itself with them (`check_same_run`) before it restores anything:

- another model, width, dataset, class count, image shape or batch size: refused. These make
  it another run: the weights do not fit, or the sample order, the steps per epoch and the
  scaled learning rate all change under the restored optimizer state.
- any other training field changed (the learning rate, the schedule, the number of steps,
  augmentation, regularization): allowed, and listed in one note that the run prints, so a
  change is never silent.
- which parameters train (config.trainable, and whether config.backbone_lr_scale is 1): refused,
  as the optimizer state's layout depends on them.
- bookkeeping (`BOOKKEEPING`: logging, evaluation, checkpointing, data location, the
  parallelism and the scan layout, which checkpoints do not depend on) and where a fresh
  run's weights come from (`START_ONLY`: a resumed run does not read them): free.
"""

from __future__ import annotations

import json
from typing import Any

from flax_resnet.errors import CheckpointError
from flax_resnet.named_models import MODEL_SPECS

# Fields a resumed run changes freely: they do not change what is trained.
BOOKKEEPING = frozenset({
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints", "plot",
    "data_dir", "fashion_mnist_source_dir", "prefetch", "cache", "eval_batch_size",
    "eval_examples", "eval_flip", "imagenet_eval_crop", "image_folder_check", "parallelism",
    "scan_blocks"})
# Fields a run reads only when it starts afresh (init_from.py).
START_ONLY = frozenset({"init_from", "init_from_step"})
# Fields compared on their own below (model, widths, dataset, classes, image shape).
_IDENTITY = frozenset({"model", "widths", "dataset", "num_classes", "image_size"})


def run_identity(config, model, num_classes: int, image_shape) -> dict[str, Any]:
  """What a checkpoint records about its run (its `meta` item)."""
  return {"model": config.model, "widths": list(model.widths), "dataset": config.dataset,
          "num_classes": num_classes, "image_shape": list(image_shape),
          "config": config.to_dict()}


def check_same_run(saved: dict[str, Any], meta: dict[str, Any], workdir: str) -> list[str]:
  """Refuses a checkpoint of another model, width, dataset, class count, image shape or batch
  size (CheckpointError); returns the other training fields that differ, as 'field a -> b'."""
  saved_widths = saved.get("widths")
  if saved_widths is None and saved.get("model") in MODEL_SPECS:  # absent: the model's own
    saved_widths = list(MODEL_SPECS[saved["model"]]["widths"])
  keys = ("model", "dataset", "num_classes")
  if [saved.get(k) for k in keys] + [saved_widths] != [meta[k] for k in keys] + [meta["widths"]]:
    raise CheckpointError(
        f"{workdir} holds checkpoints of {saved.get('model')} (widths {saved_widths}) on "
        f"{saved.get('dataset')} ({saved.get('num_classes')} classes), but this config "
        f"trains {meta['model']} (widths {meta['widths']}) on {meta['dataset']} "
        f"({meta['num_classes']} classes); use another --workdir")
  old, new = _plain(saved.get("config", {})), _plain(meta.get("config", {}))
  shapes = (saved.get("image_shape"), meta.get("image_shape"))
  batches = (old.get("batch_size"), new.get("batch_size"))
  if any(a is not None and b is not None and a != b for a, b in (shapes, batches)):
    raise CheckpointError(
        f"{workdir} holds a run of batch_size {batches[0]} on images of shape {shapes[0]}; "
        f"this config has batch_size {batches[1]} and shape {shapes[1]}. A resumed run keeps "
        "both (the sample order, the steps per epoch and the scaled learning rate depend on "
        "them): use the config that wrote the checkpoints, or another --workdir")
  groups = [_parameter_groups(c) for c in (old, new)]
  if groups[0] != groups[1]:
    raise CheckpointError(
        f"{workdir} holds a run of {groups[0]}; this config has {groups[1]}. The optimizer "
        "state's layout depends on which parameters train and how: keep the run's "
        "config.trainable and backbone_lr_scale (1 or not), or use another --workdir")
  skip = BOOKKEEPING | START_ONLY | _IDENTITY | {"batch_size"}
  return [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(new)
          if k not in skip and k in old and old[k] != new[k]]


def _parameter_groups(config: dict[str, Any]) -> str:
  """What decides the optimizer state's layout (optim.create_optimizer), in words."""
  trainable = config.get("trainable", "all")
  scaled = trainable == "all" and config.get("backbone_lr_scale", 1.0) != 1
  return f"trainable={trainable!r}" + (" with a backbone_lr_scale" if scaled else "")


def _plain(config: dict[str, Any]) -> dict[str, Any]:
  """A config dict as its checkpoint holds it (JSON: tuples as lists)."""
  return json.loads(json.dumps(config, default=str))
