"""Analyses of trained networks, as in the paper's Section 4.

`layer_responses` measures what the paper's Figure 7 plots: the standard deviation of each
3x3 convolution layer's response, taken after its BatchNorm and before the ReLU or the
addition of the shortcut, in inference mode. Residual layers respond with smaller magnitudes
than plain ones, and deeper residual nets with smaller ones still: the paper's evidence that
residual functions are closer to zero than unreferenced ones.

`output_scale` and `kernel_norm` measure two things that explain how a recipe treats a net:
how large its logits and loss are at the first training step, and how far its convolution
kernels have grown, which sets the effective step size behind BatchNorm.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import scan_layout
from flax_resnet.step import cross_entropy

_BN = re.compile(r"bn(\d*)")


def _is_batch_norm(module: nn.Module, method_name: str) -> bool:
  return isinstance(module, nn.BatchNorm) and method_name == "__call__"


def _responses_in_order(intermediates, params, path=()):
  """(path, response) of every BatchNorm whose sibling convolution (bn{k} <-> conv{k}) has a
  3x3 kernel, depth-first in the order the network called them."""
  for key, value in intermediates.items():
    match = _BN.fullmatch(key)
    if match and "__call__" in value:
      conv = params.get(f"conv{match.group(1)}", {})
      kernel = conv.get("kernel") if isinstance(conv, dict) else None
      if kernel is not None and tuple(kernel.shape[:2]) == (3, 3):
        yield path + (key,), value["__call__"][0]
    elif isinstance(value, dict):
      yield from _responses_in_order(value, params.get(key, {}), path + (key,))


def layer_responses(model, variables, images, return_names: bool = False):
  """One value per 3x3 convolution layer, in network order: the standard deviation of its
  response after BatchNorm and before the ReLU or the addition, over all the images, positions
  and channels of `images` (NHWC), computed in inference mode (BatchNorm's running averages).

  A 20-layer CIFAR net has 19 (its stem and two per block); the 7x7 stem and the 1x1
  convolutions of bottlenecks and projection shortcuts are not counted. With
  `return_names=True`, also returns each layer's module path ('stage1/block1/bn1').
  """
  if getattr(model, "scan_blocks", False):  # measure the same network, unrolled
    model = model.clone(scan_blocks=False)
    variables = scan_layout.to_unrolled_layout(variables)
  _, state = model.apply(variables, jnp.asarray(images), train=False,
                         capture_intermediates=_is_batch_norm, mutable=["intermediates"])
  found = list(_responses_in_order(state["intermediates"], variables["params"]))
  if not found:
    raise ValueError(f"{type(model).__name__} has no BatchNorm after a 3x3 convolution")
  stds = np.array([float(jnp.std(response.astype(jnp.float32))) for _, response in found])
  if return_names:
    return stds, ["/".join(path) for path, _ in found]
  return stds


def output_scale(model, variables, images, labels) -> dict[str, float]:
  """What a training step sees of the network's output: the standard deviation of the logits
  over `images` (NHWC) and classes, and the mean cross-entropy against integer `labels`, with
  BatchNorm normalizing by the batch's own statistics as in training. On freshly initialized
  variables this is the first step's loss: a residual net adds each block's unit-variance
  branch to its shortcut, so its logits start larger than a plain net's."""
  model = model.clone(axis_name=None) if hasattr(model, "axis_name") else model
  logits, _ = model.apply(variables, jnp.asarray(images), train=True, mutable=["batch_stats"],
                          rngs={"dropout": jax.random.key(0)})  # for stochastic depth, if any
  logits = logits.astype(jnp.float32)
  loss = cross_entropy(logits, jnp.asarray(labels), logits.shape[-1]).mean()  # the step's own
  return {"logit_std": float(jnp.std(logits)), "loss": float(loss)}


def kernel_norm(params) -> float:
  """The global L2 norm of all convolution kernels in `params` (the leaves named 'kernel' with
  a spatial window: 4-D, or 5-D when blocks are stacked for `scan_blocks`).

  Behind BatchNorm a network's output does not depend on the scale of a kernel, and the
  gradient shrinks as the kernel grows: an SGD step moves a kernel that has grown k-fold by
  about 1/k^2 of the angle it would have moved at its initial norm. Comparing the norm at the
  end of a run with the one at its start shows how much a net's effective learning rate fell.
  """
  kernels = [leaf for path, leaf in jax.tree.leaves_with_path(params)
             if getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 4]
  return float(np.sqrt(sum(float(jnp.sum(jnp.square(k.astype(jnp.float32)))) for k in kernels)))
