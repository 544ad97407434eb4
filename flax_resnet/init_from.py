"""Where a run that starts afresh takes its weights from: `config.init_from`.

    --config.init_from=resnet50.safetensors        torchvision's (or timm's) weights of config.model
    --config.init_from=workdirs/pretrain           another run's newest checkpoint
    --config.init_from=workdirs/pretrain --config.init_from_step=3000   ... or that step's

A weights file is read with convert.py's loaders (torchvision's layout for the models it has,
else timm's); a work directory with `workdir.load` (its raw weights, not an EMA). Parameters and
BatchNorm statistics are taken; the classifier too where the source has this run's number of
classes, else the run keeps its own freshly initialized one. Every module of the source must
match this run's network in name and shape (`check_fits`), which is checked before the run
writes anything. A work directory that holds checkpoints resumes from them and never reads
init_from (`initial_weights` returns None).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import array_fit, fs, scan_layout
from flax_resnet.errors import CheckpointError, ConfigError
from flax_resnet.optim import HEAD

# The ResNet fields that make two networks the same function of the same variables.
_ARCHITECTURE = ("stage_sizes", "block_cls", "widths", "stem", "shortcut",
                 "shortcut_downsample", "stride_in_1x1")


@dataclasses.dataclass(frozen=True)
class Start:
  """What a fresh run starts from: `variables` ({'params', 'batch_stats'} in the run model's
  layout, without the classifier where it is new) and `source`, the line a run prints and
  its checkpoints record (meta 'weights_from')."""
  variables: dict[str, Any]
  source: str


def initial_weights(config, model, image_shape, workdir: str) -> Start | None:
  """config.init_from's weights for `model` (the run's network), checked; None where
  init_from is empty or `workdir` holds checkpoints (the run resumes from those)."""
  if not config.init_from:
    return None
  from flax_resnet.checkpointing import holds_checkpoints
  if holds_checkpoints(str(fs.user_path(workdir) / "checkpoints")):
    return None
  source = fs.user_path(config.init_from)
  if source.is_dir():
    variables, what = _from_workdir(config, model, source)
  elif source.is_file():
    if config.init_from_step:
      raise ConfigError(f"config.init_from_step selects a checkpoint of a work directory; "
                        f"{source} is a weights file")
    variables, what = _from_weights_file(config, model, str(source))
  else:
    raise ConfigError(f"config.init_from={config.init_from!r}: no weights file or work "
                      f"directory at {source}")
  expected = _variable_shapes(model, image_shape)
  check_fits(variables, expected, f"config.init_from ({what})")
  classes = int(np.shape(variables["params"][HEAD]["kernel"])[-1])
  if classes == model.num_classes:
    head = f"classifier kept ({classes} classes)"
  else:
    variables = {**variables, "params": {k: v for k, v in variables["params"].items()
                                         if k != HEAD}}
    head = f"classifier new ({classes} -> {model.num_classes} classes)"
  variables = {k: variables.get(k, {}) for k in ("params", "batch_stats")}
  if model.scan_blocks:
    variables = scan_layout.to_scanned_layout(variables)
  return Start(variables=jax.tree.map(np.asarray, variables), source=f"{what}; {head}")


def _variable_shapes(model, image_shape) -> dict:
  """The run network's variables as shapes, in the unrolled layout sources hold."""
  unrolled = model.clone(scan_blocks=False, axis_name=None)
  return jax.eval_shape(lambda: unrolled.init(
      jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32), train=False))


def check_fits(variables, expected, what: str) -> None:
  """One CheckpointError naming the missing, unexpected and mis-shaped variables of
  `variables` against `expected` (the classifier's output size may differ)."""
  given = array_fit.array_shapes({c: variables.get(c, {}) for c in expected})
  wanted = array_fit.array_shapes(dict(expected))
  head = f"params/{HEAD}/"
  problems = array_fit.misfit(
      given, wanted, tolerated=lambda k, a, b: k.startswith(head) and a[:-1] == b[:-1])
  if problems:
    raise CheckpointError(f"{what} does not fit this run's network ({problems}); "
                          "init_from needs the same model, widths and image channels")


def _from_workdir(config, model, path) -> tuple[dict, str]:
  """The raw weights of another run of this library, refused where its network differs."""
  from flax_resnet.workdir import load
  run = load(str(path), step=config.init_from_step or None)
  differ = [f"{f} {_shown(getattr(run.model, f))} vs {_shown(getattr(model, f))}"
            for f in _ARCHITECTURE if _shown(getattr(run.model, f)) != _shown(getattr(model, f))]
  if differ:
    raise CheckpointError(f"config.init_from={path} holds a run of {run.config.model}, another "
                          f"network than this config's {config.model} ({', '.join(differ)})")
  return run.variables, f"work directory {path}, step {run.step}"


def _shown(value):
  if isinstance(value, (list, tuple)):
    return tuple(value)
  return getattr(value, "__name__", value)


def _from_weights_file(config, model, path: str) -> tuple[dict, str]:
  """torchvision's or timm's weights of config.model from a .safetensors or .pth file."""
  from flax_resnet import convert, convert_timm
  overrides = {"widths": tuple(model.widths), "shortcut": model.shortcut}
  if getattr(model, "stride_in_1x1", False) and "stride_in_1x1" in (
      model.block_cls.__dataclass_fields__):
    raise ConfigError("torchvision's and timm's bottlenecks stride in the 3x3 convolution: "
                      "config.stride_in_1x1=True does not fit their weights")
  timm_names = {ours: theirs for theirs, ours in convert_timm.TIMM_MODELS.items()}
  if config.model in convert.torchvision_models():
    library, load = "torchvision", lambda: convert.from_torchvision(path, config.model,
                                                                    **overrides)
  elif config.model in timm_names:
    library, load = "timm", lambda: convert_timm.from_timm(path, timm_names[config.model],
                                                           **overrides)
  else:
    raise ConfigError(f"config.init_from={path} is a weights file, but {config.model} has no "
                      "torchvision or timm layout (flax_resnet.torchvision_models(), "
                      "timm_models()); start it from a work directory of this library")
  try:
    _, variables = load()
  except (ValueError, ImportError, OSError) as e:
    raise CheckpointError(f"config.init_from={path}: {e}") from e
  return variables, f"{library} weights {path}"
