"""Whether named arrays fit a network: the one listing of missing, unexpected and mis-shaped
arrays behind every refusal to load weights (a checkpoint of another model, init_from's
weights, a PyTorch state dict in conversion)."""

from __future__ import annotations

from typing import Callable, Collection, Mapping

import jax

_LISTED = 5  # arrays named per kind of problem; the rest are counted


def array_shapes(tree) -> dict[str, tuple]:
  """{'params/fc/kernel': shape, ...}: a tree's arrays by path, the same for a TrainState
  and for the nested dicts and lists orbax saves it as."""
  def name(key):
    for field in ("name", "key", "idx"):
      if hasattr(key, field):
        return str(getattr(key, field))
    return str(key)
  return {"/".join(name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def misfit(given: Mapping[str, tuple], wanted: Mapping[str, tuple],
           tolerated: Callable[[str, tuple, tuple], bool] | None = None,
           ignored: Collection[str] = ()) -> str:
  """What keeps arrays `given` ({name: shape}) from loading into `wanted` ('' where nothing
  does): names missing, names unexpected (less `ignored`), names of other shapes, five of each
  named. `tolerated(name, given_shape, wanted_shape)` may accept a difference of shape."""
  def listed(label, items):
    more = len(items) - _LISTED
    return f"{label}: {', '.join(items[:_LISTED])}" + (f" and {more} more" if more > 0 else "")
  given = {k: tuple(shape) for k, shape in given.items()}
  wanted = {k: tuple(shape) for k, shape in wanted.items()}
  missing = [k for k in wanted if k not in given]
  extra = [k for k in given if k not in wanted and k not in ignored]
  shapes = [f"{k} is {given[k]}, expected {wanted[k]}" for k in wanted
            if k in given and given[k] != wanted[k]
            and not (tolerated and tolerated(k, given[k], wanted[k]))]
  return "; ".join(listed(label, items) for label, items in (
      ("missing", missing), ("unexpected", extra), ("other shapes", shapes)) if items)
