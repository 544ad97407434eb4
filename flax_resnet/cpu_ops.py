"""Formulations that XLA:CPU runs faster, computing the same numbers: `canonical_conv`,
`materialize`, `small_map_conv` and `max_pool`. `flax_resnet.cpu.model_overrides` applies
them to a ResNet from outside.

JAX differentiates a NHWC/HWIO convolution into two convolutions with permuted dimension
numbers (input gradient: kernel 'HWOI'; weight gradient: 'CHWN' x 'HWNO'). XLA:CPU turns
such convolutions into its canonical NHWC/HWIO form with explicit transposes, but only in the
entry computation (its ConvCanonicalization pass does not visit while-loop bodies). Inside the
loop of `nn.scan` they stay permuted, miss the Eigen/YNNPACK kernels and run in a naive loop
(benchmarks/README.md, "Scanned blocks", measures it).

`canonical_conv` computes the same forward pass and the same gradients, but writes the two
backward convolutions in the canonical layout itself, with the transposes as ordinary
operations, so that they are fast wherever they are. A model with scanned blocks uses it for
every convolution on the CPU.

`materialize` writes an array to memory once; `materialized_relu` applies it to every ReLU
output, the blocks' outputs among them. Without it XLA:CPU fuses the cheap elementwise chain
of the residual stream (BatchNorm, addition, ReLU of every earlier block of the stage) into
each consumer, including the transposes that feed the weight-gradient convolutions, and so
recomputes the whole chain there with strided reads (benchmarks/README.md measures it).

`small_map_conv` computes convolutions whose output map is smaller than the window (a 3x3
convolution on 2x2 or 1x1 maps: the last stages of ImageNet ResNets on small images) as one
matrix product of the gathered taps (im2col). XLA:CPU runs those, and the input gradient of a
3x3/2 convolution onto such a map, far below its speed on other convolutions, on Eigen and
YNNPACK alike (benchmarks/README.md, "Why ImageNet-style nets were slow on small images").
Larger maps go to `lax.conv_general_dilated` unchanged.

`max_pool` is the stem's max-pool with a gradient written as masked, strided elementwise
work, which XLA:CPU runs faster than XLA's select-and-scatter, the gradient JAX otherwise
takes (benchmarks/README.md, "The max-pool's gradient").
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
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


def _unsupported(inputs, kernel, lhs_dilation, rhs_dilation, dimension_numbers,
                 feature_group_count) -> str | None:
  """Why the arguments are outside the plain NHWC/HWIO 2-D convolution, or None."""
  if inputs.ndim != 4:
    return "only 2-D convolutions (NHWC inputs)"
  if any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    return "dilated convolutions are not supported"
  if feature_group_count != 1:
    return "grouped convolutions are not supported"
  if dimension_numbers is not None:
    dimension_numbers = lax.conv_dimension_numbers(inputs.shape, kernel.shape,
                                                   dimension_numbers)
    if dimension_numbers != lax.conv_dimension_numbers(inputs.shape, kernel.shape, _NHWC):
      return "only NHWC inputs and HWIO kernels"
  return None


def canonical_conv(inputs, kernel, window_strides: Sequence[int], padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                   precision=None):
  """`lax.conv_general_dilated` for NHWC inputs and HWIO kernels (the signature `nn.Conv`
  calls), with a backward pass of canonical-layout convolutions. Dilated and grouped
  convolutions are not needed by ResNets and are refused."""
  why = _unsupported(inputs, kernel, lhs_dilation, rhs_dilation, dimension_numbers,
                     feature_group_count)
  if why:
    raise NotImplementedError(f"canonical_conv: {why}")
  strides = tuple(int(s) for s in window_strides)
  padding = _explicit_padding(padding, inputs.shape[1:3], kernel.shape[:2], strides)
  return _canonical_conv(inputs, kernel, strides, padding, precision)


def _live_taps(k: int, n: int, m: int, s: int, low: int) -> list[int]:
  """The window offsets (0..k-1) that read the map (size n) for some output (0..m-1), not
  only padding: the others multiply zeros, and are left out."""
  return [i for i in range(k) if any(0 <= r * s + i - low < n for r in range(m))]


def im2col_conv(x, w, strides, padding, precision=None):
  """The NHWC/HWIO convolution as one matrix product: the taps that touch the map, gathered
  side by side in channels (N, H', W', taps x C_in), times the kernel's rows for those taps.
  Its gradients (by JAX) are matrix products, slices and pads: no convolution anywhere."""
  (kh, kw, cin, cout), (n, h, wd) = w.shape, x.shape[:3]
  out_hw = [(size + lo + hi - k) // s + 1
            for size, k, s, (lo, hi) in zip((h, wd), (kh, kw), strides, padding)]
  rows = _live_taps(kh, h, out_hw[0], strides[0], padding[0][0])
  cols = _live_taps(kw, wd, out_hw[1], strides[1], padding[1][0])
  dtype = jnp.result_type(x, w)
  if not rows or not cols:  # every output reads only padding
    return jnp.zeros((n, *out_hw, cout), dtype)
  padded = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0),
                                               (0, 0, 0)))
  (oh, ow), (sh, sw) = out_hw, strides
  taps = [lax.slice(padded, (0, i, j, 0), (n, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, cin),
                    (1, sh, sw, 1)) for i in rows for j in cols]
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  kernel = jnp.concatenate([w[i, j] for i in rows for j in cols], axis=0)
  return lax.dot_general(patches.astype(dtype), kernel.astype(dtype), (((3,), (0,)), ((), ())),
                         precision=precision)


def is_small_map(input_hw, kernel_hw, strides, padding) -> bool:
  """Whether `small_map_conv` rewrites this convolution: its output map is smaller than the
  window in both dimensions (3x3: outputs of 2x2 or 1x1), where XLA:CPU's convolutions (the
  forward or the input gradient) run far below their speed on larger maps."""
  return all((size + lo + hi - k) // s + 1 < k
             for size, k, s, (lo, hi) in zip(input_hw, kernel_hw, strides, padding))


def small_map_conv(inputs, kernel, window_strides: Sequence[int], padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                   precision=None, *, other=lax.conv_general_dilated):
  """`lax.conv_general_dilated` (the signature `nn.Conv` calls) that computes small-map
  convolutions (`is_small_map`) as `im2col_conv`, a matrix product with the same outputs and
  gradients, and passes every other convolution (and any it does not handle: dilated,
  grouped, other layouts) to `other` (`lax.conv_general_dilated`, or `canonical_conv` inside
  loops) unchanged. For the CPU: nn.Conv(conv_general_dilated=small_map_conv)."""
  direct = functools.partial(other, inputs, kernel, window_strides, padding,
                             lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                             dimension_numbers=dimension_numbers,
                             feature_group_count=feature_group_count, precision=precision)
  if dimension_numbers is None or _unsupported(  # None: lax's NCHW default
      inputs, kernel, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count):
    return direct()
  strides = tuple(int(s) for s in window_strides)
  padding = _explicit_padding(padding, inputs.shape[1:3], kernel.shape[:2], strides)
  if not is_small_map(inputs.shape[1:3], kernel.shape[:2], strides, padding):
    return direct()
  return im2col_conv(inputs, kernel, strides, padding, precision)


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window: tuple, strides: tuple, padding: tuple):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def _max_pool_fwd(x, window, strides, padding):
  y = _max_pool(x, window, strides, padding)
  return y, (x, y)


def _max_pool_bwd(window, strides, padding, residuals, g):
  """Each output's gradient goes to the first maximum of its window in row-major order, as
  XLA's select-and-scatter gives it, summed where windows overlap: one masked, strided
  placement per tap, all elementwise."""
  x, y = residuals
  n, h, w, c = x.shape
  _, ho, wo, _ = y.shape
  (top, bottom), (left, right) = padding
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  hp, wp = xp.shape[1], xp.shape[2]
  (sh, sw), dxp = strides, jnp.zeros_like(xp)
  taken = jnp.zeros(y.shape, bool)
  for i in range(window[0]):
    for j in range(window[1]):
      tap = lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                      (1, sh, sw, 1))
      first = (tap == y) & ~taken
      taken = taken | first
      placed = lax.pad(jnp.where(first, g, 0).astype(x.dtype), jnp.zeros((), x.dtype),
                       ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1),
                        (j, wp - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
      dxp = dxp + placed
  return (dxp[:, top:top + h, left:left + w, :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int], padding="VALID"):
  """`nn.max_pool` for NHWC inputs with explicit padding (((top, bottom), (left, right)),
  as the ResNet stem passes it), whose gradient is elementwise work instead of XLA's
  select-and-scatter, which XLA:CPU ran 20-30 times slower than the pooling itself
  (benchmarks/README.md). The same outputs, and the same gradients: each window's gradient
  goes to its first maximum. Other paddings ('SAME', 'VALID') go to `nn.max_pool`."""
  if isinstance(padding, str) or x.ndim != 4:
    return nn.max_pool(x, tuple(window_shape), tuple(strides), padding=padding)
  return _max_pool(x, tuple(window_shape), tuple(strides),
                   tuple(tuple(p) for p in padding))
