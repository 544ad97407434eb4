"""ResNet family of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

Reading order, as in torchvision's resnet.py: the shortcut (`Shortcut`), the two residual
blocks (`BasicBlock`, `BottleneckBlock`) and their plain forms, the stem (`Stem`), a stage
(`Stage`) and the network (`ResNet`). The pre-activation blocks of He et al. (ECCV 2016) are
in preact.py, stochastic depth in stochastic_depth.py, the named networks
(`create_model('resnet50')`) in named_models.py.

Beyond the 2016 paper, "Bag of Tricks" (He et al., CVPR 2019) gives two options: ResNet-C's
deep stem (`stem='deep'`) and ResNet-D's average-pooled projection shortcuts
(`shortcut_downsample='avg_pool'`); `drop_path_rate` adds stochastic depth (Huang et al. 2016).

All modules take NHWC input and are pure Flax Linen: `model.init(rng, x, train=False)` and
`model.apply(variables, x, train=True, mutable=['batch_stats'])`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_resnet import model_checks
from flax_resnet.model_checks import SHORTCUT_OPTIONS, STEMS
from flax_resnet.stochastic_depth import DropPath, drop_path_rates

Dtype = Any
ModuleDef = Callable[..., nn.Module]

# He et al. initialize convolutions with a zero-mean normal of variance 2 / fan_out ("MSRA"),
# the fan torchvision and fb.resnet.torch use.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

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


def classifier(num_classes: int, in_features: int, **kwargs) -> nn.Dense:
  """The fully connected classifier, initialized as torchvision's and fb.resnet.torch's (the
  paper does not state it): PyTorch's nn.Linear default, kernel and bias uniform in
  +-1/sqrt(in_features). Flax's default Dense init (lecun_normal kernel, zero bias) has 3x the
  kernel variance and so 3x the variance of the initial logits."""
  bound = 1.0 / in_features ** 0.5

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.Dense(num_classes, kernel_init=nn.initializers.variance_scaling(
      1 / 3, "fan_in", "uniform"), bias_init=bias_init, **kwargs)


def _last_bn_scale_init(zero: bool):
  """Zero scale on a block's last BN makes the fresh block the identity on its shortcut."""
  return nn.initializers.zeros if zero else nn.initializers.ones


def _avg_pool_2x2(x, strides: int):
  """ResNet-D's 2x2 average pool, as PyTorch's AvgPool2d(2, strides, ceil_mode=True,
  count_include_pad=False) in timm: an odd-sized input's last row and column are averaged on
  their own, so the output has the size a strided 1x1 convolution gives."""
  pad = [(0, -(size - 2) % strides) for size in x.shape[1:3]]
  return nn.avg_pool(x, (2, 2), (strides, strides), padding=pad, count_include_pad=False)


class Shortcut(nn.Module):
  """The x in y = F(x) + x, under the paper's three options.

  A: identity; where shapes change, subsample by the stride and zero-pad the new channels
     (no parameters). B: 1x1 projection + BN only where shapes change. C: projection always.
  A projection downsamples by its 1x1 convolution's stride ('stride', which reads one pixel
  in four) or, as ResNet-D, by a 2x2 average pool of that stride before a stride-1 1x1
  convolution ('avg_pool', which reads them all). `norm=None` leaves the projection without
  BN (pre-activation blocks, whose shortcut reads an input their own BN has normalized).
  """

  features: int
  strides: int
  option: str
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module] | None
  downsample: str = "stride"

  @staticmethod
  def is_identity(option: str, strides: int, in_features: int, features: int) -> bool:
    """Whether the shortcut passes its input through unchanged (no projection, no reshape)."""
    return option != "C" and strides == 1 and in_features == features

  @nn.compact
  def __call__(self, x):
    changes_shape = self.strides != 1 or x.shape[-1] != self.features
    if self.option == "C" or (self.option == "B" and changes_shape):
      strides = self.strides
      if self.downsample == "avg_pool" and strides > 1:
        x, strides = _avg_pool_2x2(x, strides), 1
      x = self.conv(self.features, (1, 1), (strides, strides), padding="VALID", name="conv")(x)
      return x if self.norm is None else self.norm(name="bn")(x)
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


class Block(nn.Module):
  """What every residual block is given: its output width (`features`, before a
  bottleneck's expansion), stride, shortcut option and the layers it is built of. Blocks are
  called as `block(x, drop_path_rate)`: the rate at which `DropPath` drops the block's
  residual branch in training (`deterministic=False`)."""

  features: int
  strides: int = 1
  shortcut: str = "B"
  shortcut_downsample: str = "stride"
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  act: Callable = nn.relu
  padding: str = "symmetric"
  # Start the residual branch's last layer at zero, so that the fresh block is the identity:
  # its last BN's scale here, its last convolution in the pre-activation blocks (preact.py).
  zero_init_residual: bool = False
  deterministic: bool = True


class BasicBlock(Block):
  """3x3 -> 3x3 residual block (ResNet-18/34 and the CIFAR nets)."""

  residual = True
  expansion = 1

  @nn.compact
  def __call__(self, x, drop_path_rate: float | jax.Array = 0.0):
    s = (self.strides, self.strides)
    y = self.conv(self.features, (3, 3), s, padding=_padding(3, self.padding), name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=_padding(3, self.padding), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    if self.residual:
      y = DropPath(self.deterministic)(y, drop_path_rate) + Shortcut(
          self.features, self.strides, self.shortcut, self.conv, self.norm,
          self.shortcut_downsample, name="shortcut")(x)
    return self.act(y)


class BottleneckBlock(Block):
  """1x1 (reduce) -> 3x3 -> 1x1 (expand x4) residual block (ResNet-50 and deeper).

  `stride_in_1x1=True` strides the first 1x1 as the paper does ("v1"); False strides the
  3x3 as torchvision, Flax's example and MLPerf do ("v1.5": more FLOPs, ~0.5% better top-1).
  """

  stride_in_1x1: bool = False
  residual = True
  expansion = 4

  @nn.compact
  def __call__(self, x, drop_path_rate: float | jax.Array = 0.0):
    s = (self.strides, self.strides)
    s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
    y = self.conv(self.features, (1, 1), s1, padding="VALID", name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), s3, padding=_padding(3, self.padding), name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y))
    out = self.features * self.expansion
    y = self.conv(out, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3", scale_init=_last_bn_scale_init(self.zero_init_residual))(y)
    if self.residual:
      y = DropPath(self.deterministic)(y, drop_path_rate) + Shortcut(
          out, self.strides, self.shortcut, self.conv, self.norm, self.shortcut_downsample,
          name="shortcut")(x)
    return self.act(y)


class PlainBasicBlock(BasicBlock):
  """BasicBlock without its shortcut: the paper's "plain" baseline."""

  residual = False


class PlainBottleneckBlock(BottleneckBlock):
  """BottleneckBlock without its shortcut."""

  residual = False


class Stem(nn.Module):
  """The layers before the first stage, each convolution followed by BN and ReLU.

  'imagenet': 7x7/2 conv, 3x3/2 max-pool. 'deep' (ResNet-C, timm's resnet*d): three 3x3
  convs of features/2, features/2 and features channels, the first strided, then the
  max-pool; cheaper than the 7x7 for the same receptive field. 'cifar': one 3x3 conv.
  `normalize_output=False` leaves the last convolution without BN and ReLU, for
  pre-activation networks, whose first block normalizes its input.
  """

  features: int
  kind: str = "imagenet"
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm
  act: Callable = nn.relu
  pool: Callable = nn.max_pool
  padding: str = "symmetric"
  normalize_output: bool = True

  @nn.compact
  def __call__(self, x):
    f = self.features
    # (name, output channels, kernel, stride) of each convolution
    convs = {"imagenet": [("conv", f, 7, 2)], "cifar": [("conv", f, 3, 1)],
             "deep": [("conv1", f // 2, 3, 2), ("conv2", f // 2, 3, 1), ("conv3", f, 3, 1)]}
    if self.kind not in convs:
      raise ValueError(f"unknown stem {self.kind!r}; use one of {STEMS}")
    for i, (name, features, k, s) in enumerate(convs[self.kind]):
      x = self.conv(features, (k, k), (s, s), padding=_padding(k, self.padding), name=name)(x)
      if self.normalize_output or i < len(convs[self.kind]) - 1:
        x = self.act(self.norm(name=name.replace("conv", "bn"))(x))
    if self.kind == "cifar":
      return x
    return self.pool(x, (3, 3), (2, 2), padding=_padding(3, self.padding))


def _scan_step(block_cls):
  """`block_cls` with the (carry, x) -> (carry, y) signature that nn.scan steps through."""

  class ScanStep(block_cls):
    def __call__(self, x, drop_path_rate):  # None where no block drops its branch
      return super().__call__(x, 0.0 if drop_path_rate is None else drop_path_rate), None

  ScanStep.__name__ = ScanStep.__qualname__ = f"Scanned{block_cls.__name__}"
  return ScanStep


class Stage(nn.Module):
  """`num_blocks` blocks of one width; the first one downsamples by `strides`.

  With `scan_blocks`, blocks 2..N, which are identical (same shapes, stride 1), are one
  `nn.scan` named "blocks" whose parameters carry a leading axis of N - 1: XLA compiles the
  block once instead of N - 1 times. `scanned_to_unrolled` / `unrolled_to_scanned` map the
  variables between the two layouts (flax_resnet/scan_layout.py). `drop_path_rates` holds
  each block's rate (empty: none); the scanned blocks receive theirs as the scan's input.
  """

  num_blocks: int
  features: int
  strides: int
  block: Callable[..., nn.Module]
  scan_blocks: bool = False
  drop_path_rates: Sequence[float] = ()

  @nn.compact
  def __call__(self, x):
    rates = list(self.drop_path_rates) or [0.0] * self.num_blocks
    repeated = self.num_blocks - 1 if self.scan_blocks else 0
    for i in range(self.num_blocks - repeated):
      x = self.block(self.features, strides=self.strides if i == 0 else 1,
                     name=f"block{i + 1}")(x, rates[i])
    if repeated:
      block = self.block
      kwargs = {}
      if isinstance(block, functools.partial):
        block, kwargs = block.func, dict(block.keywords)
      scanned = nn.scan(_scan_step(block), variable_axes={"params": 0, "batch_stats": 0},
                        split_rngs={"params": True, "dropout": True}, length=repeated)
      scanned_rates = jnp.asarray(rates[1:], jnp.float32) if any(rates[1:]) else None
      x, _ = scanned(self.features, strides=1, name=SCANNED_BLOCKS, **kwargs)(x, scanned_rates)
    return x


class ResNet(nn.Module):
  """A ResNet: stem, stages of residual (or plain) blocks, global average pool, classifier.

  With pre-activation blocks (preact.py; their class attribute `preactivation` is True) the
  stem ends on its convolution and a BN-ReLU follows the last stage ("final_bn"), as in
  He et al. (ECCV 2016): every block then starts with the BN-ReLU that normalizes its input.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block_cls: BasicBlock, BottleneckBlock, their Plain forms, or preact.PreActBasicBlock,
      preact.PreActBottleneckBlock.
    widths: base width of each stage (bottlenecks output 4x that).
    stem: 'imagenet' (7x7/2 + max-pool), 'deep' (ResNet-C: three 3x3 + max-pool) or 'cifar'
      (3x3); see `Stem`.
    num_classes: size of the classifier.
    shortcut: 'A', 'B' or 'C' (see `Shortcut`).
    shortcut_downsample: how projection shortcuts downsample: 'stride' (the 1x1 conv's
      stride, the paper) or 'avg_pool' (ResNet-D: 2x2 average pool, then a stride-1 1x1).
    stride_in_1x1: bottleneck downsampling on the first 1x1 (v1, paper) or the 3x3 (v1.5).
    zero_init_residual: start each block's last BN scale at zero, so blocks start as identities
      (Goyal et al. 2017); the paper does not. Pre-activation blocks, which end on a
      convolution, start its kernel at zero instead.
    padding: 'symmetric' (torchvision/Caffe) or 'same' (XLA SAME).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters and logits stay float32.
    axis_name: mapped axis over which BatchNorm averages its batch statistics (synchronized BN).
    bn_momentum, bn_epsilon: BatchNorm's running-average decay and epsilon.
    scan_blocks: compile each stage's blocks 2..N once with nn.scan (a deep net's first step
      compiles sooner, same numbers); its variables have the scanned layout
      stage{i}/blocks/... (see `scan_layout.unrolled_to_scanned`), the default is
      stage{i}/block{j}/....
    conv: the convolution module (nn.Conv's signature) of every layer, act: the
      activation, pool: the stem's max-pool (nn.max_pool's signature). They let a backend
      substitute an equivalent formulation that it runs faster
      (flax_resnet.cpu.model_overrides) without changing the network.
    drop_path_rate: stochastic depth: the last block's residual branch is dropped with this
      probability in training, earlier blocks' with linearly smaller ones down to 0 at the
      first (`drop_path_rates`, `DropPath`). Above 0, training needs the 'dropout' rng:
      `model.apply(variables, x, train=True, mutable=['batch_stats'],
      rngs={'dropout': key})`; evaluation (train=False) is deterministic and needs none.
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
  pool: Callable = nn.max_pool
  shortcut_downsample: str = "stride"
  drop_path_rate: float = 0.0

  def _stem_channels(self) -> int | None:
    """The input channels of the stem's first kernel, once initialized."""
    stem = self.variables.get("params", {}).get("stem", {})
    kernels = [v["kernel"] for k, v in sorted(stem.items()) if "kernel" in v]
    return kernels[0].shape[-2] if kernels else None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    """Logits of shape (batch, num_classes), or with `return_features` a dict of the stem's
    and each stage's output, the pooled features and the logits (for transfer learning).

    `x` is a batch of NHWC images; an input of another rank, a channels-first one, or one
    with other channels than the stem's kernel raises a ValueError that says so."""
    model_checks.check_fields(self)
    model_checks.check_input(x, self._stem_channels())
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype, kernel_init=he_normal)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             dtype=self.dtype, axis_name=self.axis_name)
    block_kwargs = dict(shortcut=self.shortcut, shortcut_downsample=self.shortcut_downsample,
                        conv=conv, norm=norm, act=self.act, padding=self.padding,
                        zero_init_residual=self.zero_init_residual, deterministic=not train)
    if "stride_in_1x1" in self.block_cls.__dataclass_fields__:  # bottlenecks
      block_kwargs["stride_in_1x1"] = self.stride_in_1x1
    block = functools.partial(self.block_cls, **block_kwargs)
    preactivation = getattr(self.block_cls, "preactivation", False)
    rates = drop_path_rates(self.drop_path_rate, self.stage_sizes)

    features = {}
    x = jnp.asarray(x, self.dtype)
    x = Stem(self.widths[0], self.stem, conv=conv, norm=norm, act=self.act, pool=self.pool,
             padding=self.padding, normalize_output=not preactivation, name="stem")(x)
    features["stem"] = x
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      x = Stage(num_blocks, width, strides=1 if i == 0 else 2, block=block,
                scan_blocks=self.scan_blocks, drop_path_rates=rates[i],
                name=f"stage{i + 1}")(x)
      features[f"stage{i + 1}"] = x
    if preactivation:  # the last block ends on a convolution (and its sum with the shortcut)
      x = self.act(norm(name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    features["pooled"] = x
    x = classifier(self.num_classes, x.shape[-1], dtype=self.dtype, name="fc")(x)
    logits = jnp.asarray(x, jnp.float32)
    if return_features:
      features["logits"] = logits
      return features
    return logits
