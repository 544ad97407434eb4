"""Counting a model's parameters and multiply-adds, layer by layer: `count_params`, `count_macs`
and the printable layer table `summary`, for notebooks and tests.

Multiply-adds are counted the way the paper counts its "FLOPs": those of convolutions and the
fully connected layer (one multiply-add = two floating-point operations). They are read off
the shapes that `jax.eval_shape` traces, so no weights are allocated and nothing runs.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Layer:
  path: str
  kind: str
  output_shape: tuple
  params: int
  macs: int


def _layer_macs(module: nn.Module, kernel_shape, output_shape) -> int:
  if isinstance(module, nn.Conv):
    *window, in_per_group, out = kernel_shape
    return math.prod(output_shape[1:-1]) * math.prod(window) * in_per_group * out
  if isinstance(module, nn.Dense):
    return kernel_shape[0] * kernel_shape[1]
  return 0


def layers(model: nn.Module, input_shape=(1, 224, 224, 3)) -> list[Layer]:
  """Every Conv, Dense and BatchNorm call of one forward pass, in call order (batch of 1)."""
  input_shape = (1, *input_shape[1:])
  records = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(
        module, (nn.Conv, nn.Dense, nn.BatchNorm)):
      params = module.variables.get("params", {})
      kernel = params.get("kernel")
      records.append(Layer(
          path="/".join(module.path),
          kind=type(module).__name__,
          output_shape=tuple(out.shape),
          params=sum(int(math.prod(p.shape)) for p in jax.tree.leaves(params)),
          macs=_layer_macs(module, kernel.shape, out.shape) if kernel is not None else 0))
    return out

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False)

  jax.eval_shape(init)
  return records


def count_params(model: nn.Module, input_shape=(1, 224, 224, 3)) -> int:
  """Trainable parameters (BatchNorm's running statistics are not counted, as torchvision)."""
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False))
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def count_macs(model: nn.Module, input_shape=(1, 224, 224, 3)) -> int:
  """Multiply-adds of one image's forward pass."""
  return sum(layer.macs for layer in layers(model, input_shape))


def summary(model: nn.Module, input_shape=(1, 224, 224, 3)) -> str:
  """A printable table of every layer with totals, e.g. `print(summary(create_model('resnet18')))`."""
  rows = layers(model, input_shape)
  width = max(len(r.path) for r in rows)
  lines = [f"{'layer':<{width}}  {'kind':<9}  {'output':<18}  {'params':>11}  {'MACs':>15}"]
  for r in rows:
    lines.append(f"{r.path:<{width}}  {r.kind:<9}  {str(r.output_shape[1:]):<18}  "
                 f"{r.params:>11,}  {r.macs:>15,}")
  total_params = sum(r.params for r in rows)
  total_macs = sum(r.macs for r in rows)
  lines.append(f"total: {total_params:,} parameters, {total_macs / 1e9:.3f} G multiply-adds "
               f"({2 * total_macs / 1e9:.3f} GFLOPs) per image of {tuple(input_shape[1:])}")
  return "\n".join(lines)
