"""ResNet family of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

Reading order, as in torchvision's resnet.py: the shortcut (`Shortcut`), the two residual
blocks (`BasicBlock`, `BottleneckBlock`) and their plain forms, the stem (`Stem`), a stage
(`Stage`) and the network (`ResNet`). The named networks (`create_model('resnet50')`) are in
registry.py.

All modules take NHWC input and are pure Flax Linen: `model.init(rng, x, train=False)` and
`model.apply(variables, x, train=True, mutable=['batch_stats'])`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
ModuleDef = Callable[..., nn.Module]

# He et al. initialize convolutions with a zero-mean normal of variance 2 / fan_out ("MSRA").
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

SHORTCUT_OPTIONS = ("A", "B", "C")
PADDING_MODES = ("symmetric", "same")
SCANNED_BLOCKS = "blocks"  # name of a stage's scanned blocks 2..N (see `Stage`)


def _padding(kernel: int, mode: str):
  """Padding of a k x k window.

  'symmetric' pads k // 2 on every side, as Caffe (the paper) and torchvision do; 'same' is
  XLA's SAME, which pads strided windows asymmetrically (one pixel more at the bottom/right)
  and so shifts the sampling grid by one pixel against torchvision.
  """
  if mode == "same":
    return "SAME"
  return ((kernel // 2, kernel // 2), (kernel // 2, kernel // 2))


def _last_bn_scale_init(zero: bool):
  """Zero scale on a block's last BN makes the fresh block the identity on its shortcut."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class Shortcut(nn.Module):
  """The x in y = F(x) + x, under the paper's three options.

  A: identity; where shapes change, subsample by the stride and zero-pad the new channels
     (no parameters). B: 1x1 projection + BN only where shapes change. C: projection always.
  """

  features: int
  strides: int
  option: str
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    changes_shape = self.strides != 1 or x.shape[-1] != self.features
    if self.option == "C" or (self.option == "B" and changes_shape):
      x = self.conv(self.features, (1, 1), (self.strides, self.strides), padding="VALID",
                    name="conv")(x)
      return self.norm(name="bn")(x)
    if not changes_shape:
      return x
    if self.option != "A":
      raise ValueError(f"unknown shortcut option {self.option!r}; use one of {SHORTCUT_OPTIONS}")
    x = x[:, ::self.strides, ::self.strides, :]
    extra = self.features - x.shape[-1]
    if extra < 0:
      raise ValueError("option A shortcuts can only widen: "
                       f"{x.shape[-1]} -> {self.features} channels")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


class BasicBlock(nn.Module):
  """3x3 -> 3x3 residual block (ResNet-18/34 and the CIFAR nets)."""

  features: int
  strides: int = 1
  shortcut: str = "B"
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  act: Callable = nn.relu
  padding: str = "symmetric"
  zero_init_last_bn: bool = False
  residual = True
  expansion = 1

  @nn.compact
  def __call__(self, x):
    s = (self.strides, self.strides)
    y = self.conv(self.features, (3, 3), s, padding=_padding(3, self.padding), name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=_padding(3, self.padding), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=_last_bn_scale_init(self.zero_init_last_bn))(y)
    if self.residual:
      y = y + Shortcut(self.features, self.strides, self.shortcut, self.conv, self.norm,
                       name="shortcut")(x)
    return self.act(y)


class BottleneckBlock(nn.Module):
  """1x1 (reduce) -> 3x3 -> 1x1 (expand x4) residual block (ResNet-50 and deeper).

  `stride_in_1x1=True` strides the first 1x1 as the paper does ("v1"); False strides the
  3x3 as torchvision, Flax's example and MLPerf do ("v1.5": more FLOPs, ~0.5% better top-1).
  """

  features: int
  strides: int = 1
  shortcut: str = "B"
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  act: Callable = nn.relu
  padding: str = "symmetric"
  zero_init_last_bn: bool = False
  stride_in_1x1: bool = False
  residual = True
  expansion = 4

  @nn.compact
  def __call__(self, x):
    s = (self.strides, self.strides)
    s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
    y = self.conv(self.features, (1, 1), s1, padding="VALID", name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), s3, padding=_padding(3, self.padding), name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y))
    out = self.features * self.expansion
    y = self.conv(out, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3", scale_init=_last_bn_scale_init(self.zero_init_last_bn))(y)
    if self.residual:
      y = y + Shortcut(out, self.strides, self.shortcut, self.conv, self.norm,
                       name="shortcut")(x)
    return self.act(y)


class PlainBasicBlock(BasicBlock):
  """BasicBlock without its shortcut: the paper's "plain" baseline."""

  residual = False


class PlainBottleneckBlock(BottleneckBlock):
  """BottleneckBlock without its shortcut."""

  residual = False


class Stem(nn.Module):
  """ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) or CIFAR stem (3x3 conv, BN, ReLU)."""

  features: int
  kind: str = "imagenet"
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  act: Callable = nn.relu
  padding: str = "symmetric"

  @nn.compact
  def __call__(self, x):
    if self.kind == "imagenet":
      x = self.conv(self.features, (7, 7), (2, 2), padding=_padding(7, self.padding),
                    name="conv")(x)
      x = self.act(self.norm(name="bn")(x))
      return nn.max_pool(x, (3, 3), (2, 2), padding=_padding(3, self.padding))
    if self.kind == "cifar":
      x = self.conv(self.features, (3, 3), padding=_padding(3, self.padding), name="conv")(x)
      return self.act(self.norm(name="bn")(x))
    raise ValueError(f"unknown stem {self.kind!r}; use 'imagenet' or 'cifar'")


def _scan_step(block_cls):
  """`block_cls` with the (carry, x) -> (carry, y) signature that nn.scan steps through."""

  class ScanStep(block_cls):
    def __call__(self, x, _):
      return super().__call__(x), None

  ScanStep.__name__ = ScanStep.__qualname__ = f"Scanned{block_cls.__name__}"
  return ScanStep


class Stage(nn.Module):
  """`num_blocks` blocks of one width; the first one downsamples by `strides`.

  With `scan_blocks`, blocks 2..N, which are identical (same shapes, stride 1), are one
  `nn.scan` named "blocks" whose parameters carry a leading axis of N - 1: XLA compiles the
  block once instead of N - 1 times. `scanned_to_unrolled` / `unrolled_to_scanned` map the
  variables between the two layouts (flax_resnet/scan_layout.py).
  """

  num_blocks: int
  features: int
  strides: int
  block: Callable[..., nn.Module]
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x):
    repeated = self.num_blocks - 1 if self.scan_blocks else 0
    for i in range(self.num_blocks - repeated):
      x = self.block(self.features, strides=self.strides if i == 0 else 1,
                     name=f"block{i + 1}")(x)
    if repeated:
      block = self.block
      kwargs = {}
      if isinstance(block, functools.partial):
        block, kwargs = block.func, dict(block.keywords)
      scanned = nn.scan(_scan_step(block), variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True}, length=repeated)
      x, _ = scanned(self.features, strides=1, name=SCANNED_BLOCKS, **kwargs)(x, None)
    return x


class ResNet(nn.Module):
  """A ResNet: stem, stages of residual (or plain) blocks, global average pool, classifier.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block_cls: BasicBlock, BottleneckBlock or their Plain forms.
    widths: base width of each stage (bottlenecks output 4x that).
    stem: 'imagenet' (7x7/2 + max-pool) or 'cifar' (3x3).
    num_classes: size of the classifier.
    shortcut: 'A', 'B' or 'C' (see `Shortcut`).
    stride_in_1x1: bottleneck downsampling on the first 1x1 (v1, paper) or the 3x3 (v1.5).
    zero_init_residual: start each block's last BN scale at zero, so blocks start as identities
      (Goyal et al. 2017); the paper does not.
    padding: 'symmetric' (torchvision/Caffe) or 'same' (XLA SAME).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters and logits stay float32.
    axis_name: mapped axis over which BatchNorm averages its batch statistics (synchronized BN).
    bn_momentum, bn_epsilon: BatchNorm's running-average decay and epsilon.
    scan_blocks: compile each stage's blocks 2..N once with nn.scan (a deep net's first step
      compiles sooner, same numbers); its variables have the scanned layout
      stage{i}/blocks/... (see `scan_layout.unrolled_to_scanned`), the default is
      stage{i}/block{j}/....
    conv: the convolution module (nn.Conv's signature) of every layer, and act: the
      activation. They let a backend substitute an equivalent formulation that it runs
      faster (flax_resnet.cpu.model_overrides) without changing the network.
  """

  stage_sizes: Sequence[int]
  block_cls: Callable[..., nn.Module]
  widths: Sequence[int] = (64, 128, 256, 512)
  stem: str = "imagenet"
  num_classes: int = 1000
  shortcut: str = "B"
  stride_in_1x1: bool = False
  zero_init_residual: bool = False
  padding: str = "symmetric"
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  scan_blocks: bool = False
  conv: ModuleDef = nn.Conv
  act: Callable = nn.relu

  def _check_fields(self):
    """Called at the top of __call__: a field out of range fails with its name."""
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and widths "
                       f"{tuple(self.widths)} must have the same length")
    if self.shortcut not in SHORTCUT_OPTIONS:
      raise ValueError(f"unknown shortcut option {self.shortcut!r}; use one of "
                       f"{SHORTCUT_OPTIONS}")
    if self.padding not in PADDING_MODES:
      raise ValueError(f"unknown padding {self.padding!r}; use one of {PADDING_MODES}")

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """Logits of shape (batch, num_classes), or with `return_features` a dict of the stem's
    and each stage's output, the pooled features and the logits (for transfer learning)."""
    self._check_fields()
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype, kernel_init=he_normal)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, axis_name=self.axis_name)
    block_kwargs = dict(shortcut=self.shortcut, conv=conv, norm=norm, act=self.act,
                        padding=self.padding, zero_init_last_bn=self.zero_init_residual)
    if issubclass(self.block_cls, BottleneckBlock):
      block_kwargs["stride_in_1x1"] = self.stride_in_1x1
    block = functools.partial(self.block_cls, **block_kwargs)

    features = {}
    x = jnp.asarray(x, self.dtype)
    x = Stem(self.widths[0], self.stem, conv=conv, norm=norm, act=self.act,
             padding=self.padding, name="stem")(x)
    features["stem"] = x
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      x = Stage(num_blocks, width, strides=1 if i == 0 else 2, block=block,
                scan_blocks=self.scan_blocks, name=f"stage{i + 1}")(x)
      features[f"stage{i + 1}"] = x
    x = jnp.mean(x, axis=(1, 2))
    features["pooled"] = x
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    logits = jnp.asarray(x, jnp.float32)
    if return_features:
      features["logits"] = logits
      return features
    return logits
