"""The two variable layouts of a ResNet, and the maps between them.

The default layout names every block: stage{i}/block{j}/.... With `scan_blocks=True` a stage's
blocks 2..N are one `nn.scan` whose variables are stacked along a leading axis under
stage{i}/blocks/... (models.Stage). Checkpoints and converted torchvision weights always hold
the unrolled layout, so a run may switch `scan_blocks` when it resumes: the training loop
saves `to_unrolled_layout(state)` and restores with `to_scanned_layout` where the model scans.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp

from flax_resnet.models import SCANNED_BLOCKS

_STAGE = re.compile(r"stage\d+")
_BLOCK = re.compile(r"block(\d+)")


def unrolled_to_scanned(tree):
  """Variables (or params, batch_stats, gradients, ...) of the default layout
  stage{i}/block{j}/... in the layout of `scan_blocks=True`: block1 stays, blocks 2..N are
  stacked along a new leading axis under stage{i}/blocks/...."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if _STAGE.fullmatch(str(key)) and isinstance(value, Mapping):
      numbers = sorted(int(m.group(1)) for k in value if (m := _BLOCK.fullmatch(str(k))))
      if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{key} has blocks {numbers}; expected block1..blockN")
      stage = {k: v for k, v in value.items() if not _BLOCK.fullmatch(str(k))
               or k == "block1"}
      if len(numbers) > 1:
        if SCANNED_BLOCKS in stage:
          raise ValueError(f"{key} has both block2.. and {SCANNED_BLOCKS!r}: mixed layouts")
        stage[SCANNED_BLOCKS] = jax.tree.map(
            lambda *xs: jnp.stack(xs), *(value[f"block{n}"] for n in numbers[1:]))
      out[key] = stage
    else:
      out[key] = unrolled_to_scanned(value)
  return out


def scanned_to_unrolled(tree):
  """The inverse of `unrolled_to_scanned`: stage{i}/blocks/... (leading axis N - 1) back to
  stage{i}/block2..blockN/..., the layout of checkpoints and converted torchvision weights."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if _STAGE.fullmatch(str(key)) and isinstance(value, Mapping) and SCANNED_BLOCKS in value:
      stage = {k: v for k, v in value.items() if k != SCANNED_BLOCKS}
      stacked = value[SCANNED_BLOCKS]
      length = jax.tree.leaves(stacked)[0].shape[0]
      for n in range(length):
        stage[f"block{n + 2}"] = jax.tree.map(lambda x, n=n: x[n], stacked)
      out[key] = stage
    else:
      out[key] = scanned_to_unrolled(value)
  return out


def _is_network_tree(tree) -> bool:
  return isinstance(tree, Mapping) and any(_STAGE.fullmatch(str(k)) for k in tree)


def to_unrolled_layout(tree):
  """`scanned_to_unrolled` applied to every network-shaped part of any pytree: a TrainState's
  params, batch_stats and the optimizer's momentum alike. Checkpoints hold this layout, so a
  run may switch `scan_blocks` when it resumes."""
  return jax.tree.map(lambda x: scanned_to_unrolled(x) if _is_network_tree(x) else x, tree,
                      is_leaf=_is_network_tree)


def to_scanned_layout(tree):
  """The inverse of `to_unrolled_layout`."""
  return jax.tree.map(lambda x: unrolled_to_scanned(x) if _is_network_tree(x) else x, tree,
                      is_leaf=_is_network_tree)


