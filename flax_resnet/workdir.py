"""A trained work directory, read back: `flax_resnet.load(workdir)`.

    run = flax_resnet.load("workdirs/fashion_mnist")       # or gs://bucket/run; step=, ema=
    run.predict("shoe.png", k=3)                           # [Prediction(index, probability, name), ...]
    logits = run.model.apply(run.variables, images, train=False)

A work directory holds the checkpoints (checkpointing.py; each records its run's model, widths,
dataset, class count and config) and `classes.json`, the names of the run's classes in label
order, which the training loop writes when it starts (`record_classes`). `load` rebuilds the
run's network (model, widths, shortcut, classes and compute dtype of its config, without the
training-only data-parallel axis) and returns it with the checkpoint's weights, raw or EMA.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from flax_resnet import fs
from flax_resnet.errors import CheckpointError
from flax_resnet.models import ResNet

CLASSES_FILE = "classes.json"


def record_classes(workdir: str, config, num_classes: int) -> None:
  """Writes WORKDIR/classes.json, {"classes": [names in label order]}, unless it is there;
  process 0 only. Nothing is written where the config's class count is not the dataset's
  (config.num_classes set to another number): names would be wrong."""
  path = fs.user_path(workdir) / CLASSES_FILE
  if jax.process_index() != 0 or path.exists():
    return
  from flax_resnet.data.class_names import class_names
  names = class_names(config)
  if len(names) == num_classes:
    path.write_text(json.dumps({"classes": names}, indent=1) + "\n")


class Run(NamedTuple):
  """A trained model as `load` returns it."""
  model: ResNet
  variables: dict            # {'params': ..., 'batch_stats': ...}, numpy arrays
  config: ml_collections.ConfigDict   # the run's config
  class_names: list[str] | None       # in label order; None where the run did not record them
  step: int                  # the checkpoint's step
  image_shape: tuple[int, int, int]   # what the network was trained on, (H, W, C)

  def preprocess(self, image) -> np.ndarray:
    """An image (path, PIL image or array) as the run's evaluation gives it to the model:
    (H, W, C), or (V, H, W, C) where it scores several views (data/eval_image.py)."""
    return self.preprocessor()(image)

  def preprocessor(self):
    """`preprocess` as one function, built once (for many images)."""
    from flax_resnet.data.eval_image import eval_preprocessor
    return eval_preprocessor(self.config, self.image_shape[-1])

  def predict(self, image, k: int = 5):
    """The k most likely classes of one image, named, most likely first."""
    from flax_resnet.inference import predict
    return predict(self.model, self.variables, image, k, self.class_names,
                   preprocess_fn=self.preprocessor())


def run_config(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The saved config as a complete ConfigDict: the default config with the saved fields (JSON
  lists back to tuples where the field is a tuple)."""
  from flax_resnet.config import default_config
  config = default_config()
  for key, value in saved.items():
    if key in config:
      config[key] = tuple(value) if isinstance(config[key], tuple) else value
  return config


def load(workdir: str, step: int | None = None, ema: bool = False) -> Run:
  """The model trained in `workdir` (local or gs://), at its newest checkpoint or `step`.

  `ema=True` gives the exponential moving average of the weights, where the run kept one
  (config.ema_decay > 0). A missing work directory, one without checkpoints, a step it does
  not hold or a checkpoint that cannot be read is one CheckpointError.
  """
  from flax_resnet.checkpointing import read_checkpoint
  from flax_resnet.loop import build_model

  path = fs.user_path(workdir)
  if not path.is_dir():
    raise CheckpointError(f"no work directory at {path}")
  if not (path / "checkpoints").is_dir():
    raise CheckpointError(f"no checkpoint in {path}: it holds no checkpoints folder (train "
                          "there first, or check the path)")
  step, state, meta = read_checkpoint(str(path / "checkpoints"), step)
  config = run_config(meta.get("config", {}))
  config.widths = tuple(meta["widths"])
  if ema:
    if state.get("ema_params") is None:
      raise CheckpointError(f"the checkpoint at step {step} in {path} holds no EMA of the "
                            f"weights (its run had config.ema_decay={config.ema_decay}); "
                            "load it without ema=True")
    variables = {"params": state["ema_params"], "batch_stats": state["ema_batch_stats"]}
  else:
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  model = build_model(config, meta["num_classes"]).clone(axis_name=None, scan_blocks=False)
  return Run(model, variables, config, read_class_names(path, meta), step,
             tuple(meta["image_shape"]))


def read_class_names(path, meta: dict[str, Any]) -> list[str] | None:
  """WORKDIR/classes.json's names; for a run that did not record them, its dataset's where
  that has fixed classes (not an image folder) and the class count matches; else None."""
  file = path / CLASSES_FILE
  if file.exists():
    names = json.loads(file.read_text())["classes"]
  elif meta.get("dataset") in ("fashion_mnist", "cifar10", "imagenet2012"):
    from flax_resnet.data.class_names import class_names
    names = class_names(ml_collections.ConfigDict({"dataset": meta["dataset"]}))
  else:
    return None
  return names if len(names) == meta["num_classes"] else None

