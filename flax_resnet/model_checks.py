"""What a `models.ResNet` accepts: the allowed values of its fields that take a name, and the
checks that refuse a field out of range or an input that is not a batch of NHWC images, each
with a message that names what is expected. The config check (config.py) reads the same
allowed values, so each is defined here once."""

from __future__ import annotations

import numbers

import jax.numpy as jnp

from flax_resnet.stochastic_depth import RATE_RANGE

SHORTCUT_OPTIONS = ("A", "B", "C")
SHORTCUT_DOWNSAMPLES = ("stride", "avg_pool")
STEMS = ("imagenet", "deep", "cifar")
PADDING_MODES = ("symmetric", "same")

NHWC = "a batch of NHWC images, (batch, height, width, channels)"


def check_fields(model) -> None:
  """A ValueError naming the first of `model`'s fields that is out of range."""
  if len(model.stage_sizes) != len(model.widths):
    raise ValueError(f"stage_sizes {tuple(model.stage_sizes)} and widths "
                     f"{tuple(model.widths)} must have the same length")
  for field, allowed in (("shortcut", SHORTCUT_OPTIONS), ("padding", PADDING_MODES),
                         ("shortcut_downsample", SHORTCUT_DOWNSAMPLES), ("stem", STEMS)):
    value = getattr(model, field)
    if value not in allowed:
      raise ValueError(f"unknown {field} {value!r}; use one of {allowed}")
  if not (isinstance(model.num_classes, numbers.Integral) and model.num_classes >= 1):
    raise ValueError(f"num_classes must be a positive integer, not {model.num_classes!r}")
  if not RATE_RANGE[0](model.drop_path_rate):
    raise ValueError(f"drop_path_rate must be {RATE_RANGE[1]}, not {model.drop_path_rate}")
  if model.drop_path_rate and not model.block_cls.residual:
    raise ValueError(f"drop_path_rate needs residual blocks; {model.block_cls.__name__} "
                     "has no shortcut to fall back on")


def check_input(x, stem_channels: int | None) -> None:
  """A ValueError naming the expected layout for an input that is not a batch of NHWC images:
  not 4-D; channels-first (NCHW), seen as a second axis of at most 4 (the channels of a grey,
  RGB or RGBA image) before a last axis above 4, which read as NHWC would be pictures at most
  4 pixels high; or, once initialized (`stem_channels` known), other channels than the
  stem's. Only concrete sizes are compared: exporters may trace symbolic ones."""
  shape = tuple(jnp.shape(x))
  if len(shape) != 4:
    raise ValueError(f"ResNet takes {NHWC}; got an input of shape {shape}")
  if not all(isinstance(d, int) for d in shape[1:]):
    return
  if shape[1] <= 4 < shape[3]:
    raise ValueError(f"ResNet takes {NHWC}; the input of shape {shape} looks "
                     "channels-first (NCHW): transpose it with x.transpose(0, 2, 3, 1)")
  if stem_channels is not None and stem_channels != shape[3]:
    raise ValueError(f"this model's stem takes {stem_channels}-channel images as {NHWC}; "
                     f"got an input of shape {shape} with {shape[3]} channels")
