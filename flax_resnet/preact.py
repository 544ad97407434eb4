"""Pre-activation ResNets: He et al., "Identity Mappings in Deep Residual Networks" (ECCV 2016).

The 2016 block computes y = relu(F(x) + x): the ReLU after the addition sits on the identity
path. The pre-activation block moves BN and ReLU in front of each convolution,
y = x + F(x) with F = conv(relu(bn(conv(relu(bn(x)))))), so the signal of any block reaches
any later one (and the gradient flows back) through additions alone, which lets the
1001-layer CIFAR net train better than the original design of that depth.

The network is `models.ResNet` with these blocks: seeing their `preactivation` attribute, it
ends the stem on its convolution (the first block's BN-ReLU normalizes it) and puts a final
BN-ReLU ("final_bn") after the last stage, whose blocks end on a convolution. Stem, stages,
scanned blocks, dtype, axis_name and the conv/act substitutions are models.py's.

The identity path stays clean: where shapes match, the shortcut is x itself. Where it must
project (option B/C) or reshape (option A), it reads the pre-activated x, bn1's output, as
the paper's code ('both_preact') and timm's resnetv2 do, and its projection has no BN of its
own. Parameter for parameter, the ImageNet networks equal timm's BatchNorm pre-activation
`resnetv2_18/34/50/101/152`.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from flax_resnet.models import Block, Shortcut, _padding
from flax_resnet.stochastic_depth import DropPath


def _last_conv_init(zero: bool):
  """A zero last convolution makes the fresh block the identity (`zero_init_residual`: a
  pre-activation block has no BN after its last convolution, so timm zeroes the kernel)."""
  return {"kernel_init": nn.initializers.zeros} if zero else {}


def _shortcut(block, x, x_preact, features: int):
  """x itself where the shortcut is the identity; else the shortcut of the pre-activated x."""
  if Shortcut.is_identity(block.shortcut, block.strides, x.shape[-1], features):
    return x
  return Shortcut(features, block.strides, block.shortcut, block.conv, norm=None,
                  downsample=block.shortcut_downsample, name="shortcut")(x_preact)


class PreActBasicBlock(Block):
  """BN-ReLU-3x3, BN-ReLU-3x3, added to x (the paper's Fig. 4(e), with basic blocks)."""

  residual = True
  preactivation = True
  expansion = 1

  @nn.compact
  def __call__(self, x, drop_path_rate: float | jax.Array = 0.0):
    s = (self.strides, self.strides)
    x_preact = self.act(self.norm(name="bn1")(x))
    y = self.conv(self.features, (3, 3), s, padding=_padding(3, self.padding),
                  name="conv1")(x_preact)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(self.features, (3, 3), padding=_padding(3, self.padding), name="conv2",
                  **_last_conv_init(self.zero_init_residual))(y)
    return (DropPath(self.deterministic)(y, drop_path_rate)
            + _shortcut(self, x, x_preact, self.features))


class PreActBottleneckBlock(Block):
  """BN-ReLU-1x1 (reduce), BN-ReLU-3x3, BN-ReLU-1x1 (expand x4), added to x (Fig. 4(e)).

  `stride_in_1x1` as in models.BottleneckBlock: the paper's code strides the first 1x1,
  timm (the default here) the 3x3.
  """

  stride_in_1x1: bool = False
  residual = True
  preactivation = True
  expansion = 4

  @nn.compact
  def __call__(self, x, drop_path_rate: float | jax.Array = 0.0):
    s = (self.strides, self.strides)
    s1, s3 = (s, (1, 1)) if self.stride_in_1x1 else ((1, 1), s)
    x_preact = self.act(self.norm(name="bn1")(x))
    y = self.conv(self.features, (1, 1), s1, padding="VALID", name="conv1")(x_preact)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(self.features, (3, 3), s3, padding=_padding(3, self.padding), name="conv2")(y)
    y = self.act(self.norm(name="bn3")(y))
    out = self.features * self.expansion
    y = self.conv(out, (1, 1), padding="VALID", name="conv3",
                  **_last_conv_init(self.zero_init_residual))(y)
    return DropPath(self.deterministic)(y, drop_path_rate) + _shortcut(self, x, x_preact, out)
