"""The train state and the per-device train and eval steps.

The steps are written pmap-style: each sees its device's shard of the batch and averages
gradients, BatchNorm statistics (inside the model, through `axis_name`) and metrics across
devices with collectives. `flax_resnet.parallel` maps them over the devices with
`jax.shard_map` or `jax.pmap`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import dynamic_scale as dynamic_scale_lib

from flax_resnet.parallel import AXIS


class TrainState(struct.PyTreeNode):
  """Everything a resumed run needs; the data position is `step` (the input is a function of
  (seed, step)), and there is no other randomness in training."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # float16 only: the dynamic loss scale (None otherwise).
  dynamic_scale: dynamic_scale_lib.DynamicScale | None = None


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                       rng: jax.Array, use_loss_scaling: bool = False) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      dynamic_scale=dynamic_scale_lib.DynamicScale() if use_loss_scaling else None)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits, targets)


def accumulated_grads(loss_fn: Callable, params, batch_stats, batch, steps: int):
  """Loss, logits, batch_stats and the mean gradient of `loss_fn` over `steps` equal
  micro-batches of `batch`, run one after the other (lax.scan) so that only one micro-batch's
  activations are held at a time.

  `loss_fn(params, batch_stats, micro_batch)` returns (loss, (logits, new_batch_stats)). Each
  micro-batch is normalized by BatchNorm with its own statistics and updates the running
  averages in turn; without BatchNorm the mean gradient is that of the whole batch.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    (loss, (logits, batch_stats)), grads = grad_fn(params, batch_stats, batch)
    return loss, logits, batch_stats, grads
  micro = jax.tree.map(lambda x: x.reshape((steps, x.shape[0] // steps, *x.shape[1:])), batch)

  def one(carry, micro_batch):
    stats, grad_sum = carry
    (loss, (logits, stats)), grads = grad_fn(params, stats, micro_batch)
    return (stats, jax.tree.map(jnp.add, grad_sum, grads)), (loss, logits)

  zeros = jax.tree.map(jnp.zeros_like, params)
  (batch_stats, grad_sum), (losses, logits) = jax.lax.scan(one, (batch_stats, zeros), micro)
  grads = jax.tree.map(lambda g: g / steps, grad_sum)
  return jnp.mean(losses), logits.reshape((-1, logits.shape[-1])), batch_stats, grads


def train_step(state: TrainState, batch, *, model: nn.Module, tx: optax.GradientTransformation,
               learning_rate_fn: Callable, num_classes: int, label_smoothing: float = 0.0,
               grad_accum_steps: int = 1):
  """One optimizer step on this device's shard; returns the new state and averaged metrics.

  `model` must have been created with `axis_name=AXIS`, so its BatchNorm statistics are the
  statistics of the global batch (synchronized BN). With grad_accum_steps k > 1 the shard is
  split into k micro-batches whose gradients are averaged before the one update
  (accumulated_grads); BatchNorm then sees (and synchronizes) one micro-batch at a time.
  """

  def loss_fn(params, batch_stats, batch):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, batch["label"], num_classes, label_smoothing))
    return loss, (logits, updates.get("batch_stats", {}))

  if state.dynamic_scale is not None:  # check_config: float16 runs have grad_accum_steps 1
    # float16: scale the loss so small gradients survive; skip steps whose gradients overflow.
    grad_fn = state.dynamic_scale.value_and_grad(
        lambda p: loss_fn(p, state.batch_stats, batch), has_aux=True, axis_name=AXIS)
    dynamic_scale, is_finite, (loss, (logits, batch_stats)), grads = grad_fn(state.params)
  else:
    loss, logits, batch_stats, grads = accumulated_grads(
        loss_fn, state.params, state.batch_stats, batch, grad_accum_steps)
    grads = jax.lax.pmean(grads, AXIS)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
  if state.dynamic_scale is not None:
    keep = functools.partial(jnp.where, is_finite)
    new_state = new_state.replace(
        params=jax.tree.map(keep, new_state.params, state.params),
        opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
        batch_stats=jax.tree.map(keep, new_state.batch_stats, state.batch_stats),
        dynamic_scale=dynamic_scale)

  metrics = {
      "train_loss": loss,
      "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
  }
  metrics = jax.lax.pmean(metrics, AXIS)
  metrics["learning_rate"] = learning_rate_fn(state.step)
  return new_state, metrics


def eval_step(state: TrainState, batch, *, model: nn.Module, num_classes: int):
  """Sums of loss, top-1 and top-5 hits and real examples over all devices.

  Padding examples (mask 0) count nowhere, so the whole split is evaluated exactly once.
  Multi-view batches (B, V, H, W, C), ten crops or an image and its mirror, are scored
  by the mean of the views' logits.
  """
  images = batch["image"]
  views = images.shape[1] if images.ndim == 5 else 0
  if views:
    images = images.reshape((-1, *images.shape[2:]))
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images,
                       train=False)
  if views:
    logits = logits.reshape((-1, views, logits.shape[-1])).mean(axis=1)
  labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
  top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
  sums = {
      "loss": jnp.sum(cross_entropy(logits, labels, num_classes) * mask),
      "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
      "count": jnp.sum(mask),
  }
  return jax.lax.psum(sums, AXIS)
