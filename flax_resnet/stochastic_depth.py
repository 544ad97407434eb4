"""Stochastic depth (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016), as timm.

In training, each residual block's branch is dropped for a random subset of the examples,
leaving them the shortcut alone: the network trained is shallower on average, and the
full-depth network evaluated averages over the shallower ones, much like an ensemble. `models.ResNet`'s
`drop_path_rate` sets the last block's rate; the earlier blocks' fall linearly to 0
(`drop_path_rates`). The masks come from the 'dropout' rng stream, so training with a rate
above 0 needs `model.apply(..., train=True, rngs={'dropout': key})`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


# The allowed drop_path_rate, one rule for the config check and ResNet: (test, what it must be).
# A rate of 1 would never train the last block.
RATE_RANGE = (lambda rate: 0 <= rate < 1, "in [0, 1)")


class DropPath(nn.Module):
  """Stochastic depth (Huang et al. 2016), as timm's drop_path: in training
  (`deterministic=False`) each example's residual branch is zeroed with probability `rate` and
  the kept ones are scaled by 1 / (1 - rate), so the branch's expected value is unchanged; at
  evaluation it is the identity. The masks come from the 'dropout' rng stream. `rate` may be
  a traced scalar (the per-block rates that scanned blocks receive as scan inputs).
  """

  deterministic: bool = True

  @nn.compact
  def __call__(self, y, rate: float | jax.Array):
    if self.deterministic or (isinstance(rate, (int, float)) and rate == 0):
      return y
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                (y.shape[0],) + (1,) * (y.ndim - 1))
    # rate 1 drops every branch: the 1 / 0 is never selected
    return y * jnp.where(mask, 1.0 / keep, 0.0).astype(y.dtype)


def drop_path_rates(rate: float, stage_sizes: Sequence[int]) -> list[list[float]]:
  """Each block's drop-path rate, stage by stage: rising linearly over the whole network from
  0 at the first block to `rate` at the last (timm's rule; deeper blocks are dropped more)."""
  total = sum(stage_sizes)
  rates = [rate * i / max(total - 1, 1) for i in range(total)]
  starts = [sum(stage_sizes[:i]) for i in range(len(stage_sizes))]
  return [rates[start:start + n] for start, n in zip(starts, stage_sizes)]
