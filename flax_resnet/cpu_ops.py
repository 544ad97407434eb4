"""Formulations that XLA:CPU runs faster, computing the same numbers: `canonical_conv` and
`materialize`. `flax_resnet.cpu.model_overrides` applies them to a ResNet from outside.

JAX differentiates a NHWC/HWIO convolution into two convolutions with permuted dimension
numbers (input gradient: kernel 'HWOI'; weight gradient: 'CHWN' x 'HWNO'). XLA:CPU turns
such convolutions into its canonical NHWC/HWIO form with explicit transposes, but only in the
entry computation (its ConvCanonicalization pass does not visit while-loop bodies). Inside the
loop of `nn.scan` they stay permuted, miss the Eigen/YNNPACK kernels and run in a naive loop:
ResNet train steps with scanned blocks ran 10-18x slower on the CPU.

`canonical_conv` computes the same forward pass and the same gradients, but writes the two
backward convolutions in the canonical layout itself, with the transposes as ordinary
operations, so that they are fast wherever they are. A model with scanned blocks uses it for
every convolution on the CPU.

`materialize` writes an array to memory once; `materialized_relu` applies it to every ReLU
output, the blocks' outputs among them. Without it XLA:CPU fuses the cheap elementwise chain
of the residual stream (BatchNorm, addition, ReLU of every earlier block of the stage) into
each consumer, including the transposes that feed the weight-gradient convolutions, and so
recomputes the whole chain there with strided reads (benchmarks/README.md measures it).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding, input_hw, kernel_hw, strides) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(input_hw, kernel_hw, strides, padding))
  return tuple((int(low), int(high)) for low, high in padding)


def _conv(x, w, strides, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1), precision=None):
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _canonical_conv(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision=precision)


def _forward(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision=precision), (x, w)


def _backward(strides, padding, precision, residuals, dy):
  x, w = residuals
  (kh, kw), in_hw, out_hw = w.shape[:2], x.shape[1:3], dy.shape[1:3]
  # Input gradient: dy, dilated by the stride, convolved with the spatially flipped kernel
  # whose in/out channels are swapped (HWIO -> HWOI read as HWIO).
  # Weight gradient: a convolution over the batch, with channels in place of the batch
  # (x as C_in x H x W x N, dy as H' x W' x N x C_out, dilated by the stride).
  dx_padding, dw_padding = [], []
  for k, n, m, s, (low, _) in zip((kh, kw), in_hw, out_hw, strides, padding):
    before = k - 1 - low
    dx_padding.append((before, n - (m - 1) * s - 1 - before + k - 1))
    dw_padding.append((low, k + (m - 1) * s - n - low))
  w_flipped = w[::-1, ::-1].transpose(0, 1, 3, 2)
  dx = _conv(dy, w_flipped, (1, 1), dx_padding, lhs_dilation=strides, precision=precision)
  dw = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), dw_padding,
             rhs_dilation=strides, precision=precision)
  return dx, dw.transpose(1, 2, 0, 3).astype(w.dtype)


_canonical_conv.defvjp(_forward, _backward)


def canonical_conv(inputs, kernel, window_strides: Sequence[int], padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                   precision=None):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels (the signature `nn.Conv`
  calls), with a backward pass of canonical-layout convolutions. Dilated and grouped
  convolutions are not needed by ResNets and are refused."""
  if any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    raise NotImplementedError("canonical_conv: dilated convolutions are not supported")
  if feature_group_count != 1:
    raise NotImplementedError("canonical_conv: grouped convolutions are not supported")
  if dimension_numbers is not None:
    dimension_numbers = lax.conv_dimension_numbers(inputs.shape, kernel.shape,
                                                   dimension_numbers)
    if dimension_numbers != lax.conv_dimension_numbers(inputs.shape, kernel.shape, _NHWC):
      raise NotImplementedError("canonical_conv: only NHWC inputs and HWIO kernels")
  strides = tuple(int(s) for s in window_strides)
  padding = _explicit_padding(padding, inputs.shape[1:3], kernel.shape[:2], strides)
  return _canonical_conv(inputs, kernel, strides, padding, precision)


def materialize(x):
  """`x`, computed once into memory before its consumers run.

  A conditional is a fusion barrier that XLA keeps (`lax.optimization_barrier` is expanded
  before fusion on the CPU). Both branches return `x` unchanged (`v * 1.0` is exact; two
  identical branches would be merged away), so the values and gradients are those of `x`, and
  the conditional costs nothing on the CPU: its result aliases its operand. On GPU and TPU it
  would only break useful fusions; `cpu.model_overrides` applies it on the CPU alone.
  """
  first = x.reshape(-1)[0]
  return lax.cond(first == first, lambda v: v, lambda v: v * 1.0, x)


def materialized_relu(x):
  """ReLU whose output XLA:CPU computes once instead of inside each consumer."""
  return materialize(nn.relu(x))
