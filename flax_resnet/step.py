"""The train state and the per-device train and eval steps.

The steps are written pmap-style: each sees its device's shard of the batch and averages
gradients, BatchNorm statistics (inside the model, through `axis_name`) and metrics across
devices with collectives. `flax_resnet.parallel` maps them over the devices with
`jax.shard_map` or `jax.pmap`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import dynamic_scale as dynamic_scale_lib

from flax_resnet import mixing, optim
from flax_resnet.parallel import AXIS


class TrainState(struct.PyTreeNode):
  """Everything a resumed run needs; the data position is `step` (the input is a function of
  (seed, step)), and so is every random draw of training (`step_rng`), so there is no rng
  to keep."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # float16 only: the dynamic loss scale (None otherwise).
  dynamic_scale: dynamic_scale_lib.DynamicScale | None = None
  # config.ema_decay > 0 only (None otherwise: a state without EMA holds no such leaves): the
  # exponential moving average of the parameters and, as timm's ModelEmaV2
  # averages BatchNorm's buffers with the weights, of the BatchNorm statistics. The running
  # statistics of the raw weights describe the raw network's activations, which move ahead
  # of the averaged network's; their average lags as the averaged weights do.
  ema_params: Any = None
  ema_batch_stats: Any = None


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                       rng: jax.Array, use_loss_scaling: bool = False, ema: bool = False,
                       start: dict | None = None) -> TrainState:
  """Step 0 of training `model`: its own initialization from `rng`, where `start` (pretrained
  {'params': ..., 'batch_stats': ...} in the model's layout, see init_from.py) does not give
  a module's variables; the optimizer state and an EMA start at the resulting weights."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  if start is not None:
    variables = {collection: {**tree, **start.get(collection, {})}
                 for collection, tree in variables.items()}
  params = variables["params"]
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      dynamic_scale=dynamic_scale_lib.DynamicScale() if use_loss_scaling else None)
  return with_ema(state) if ema else state


def with_ema(state: TrainState) -> TrainState:
  """`state` with its EMA started at its current weights (copies: the step donates buffers)."""
  return state.replace(ema_params=jax.tree.map(jnp.copy, state.params),
                       ema_batch_stats=jax.tree.map(jnp.copy, state.batch_stats))


def ema_update(ema, new, decay: float):
  """decay * ema + (1 - decay) * new, leaf by leaf: after k updates with the same `new`,
  decay**k * ema + (1 - decay**k) * new."""
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


# The rng streams of training, folded into jax.random.key(seed); model init uses the key itself.
_TRAIN_STREAM = 1


def step_rng(seed: int, step: jax.Array) -> jax.Array:
  """This device's key of training step `step`: a function of (seed, step, device index)
  only, so a resumed run draws what an uninterrupted one drew. Call inside a mapped step."""
  key = jax.random.fold_in(jax.random.key(seed), _TRAIN_STREAM)
  return jax.random.fold_in(jax.random.fold_in(key, step), jax.lax.axis_index(AXIS))


def soft_targets(labels, num_classes: int, label_smoothing: float = 0.0):
  onehot = jax.nn.one_hot(labels, num_classes)
  return optax.smooth_labels(onehot, label_smoothing) if label_smoothing else onehot


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
  return optax.softmax_cross_entropy(logits, soft_targets(labels, num_classes, label_smoothing))


def accumulated_grads(loss_fn: Callable, params, batch_stats, batch, steps: int):
  """Loss, logits, batch_stats and the mean gradient of `loss_fn` over `steps` equal
  micro-batches of `batch`, run one after the other (lax.scan) so that only one micro-batch's
  activations are held at a time.

  `loss_fn(params, batch_stats, micro_batch, index)` returns (loss, (logits, new_batch_stats));
  `index` numbers the micro-batch (0 without accumulation), for its random draws. Each
  micro-batch is normalized by BatchNorm with its own statistics and updates the running
  averages in turn; without BatchNorm the mean gradient is that of the whole batch.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    (loss, (logits, batch_stats)), grads = grad_fn(params, batch_stats, batch, 0)
    return loss, logits, batch_stats, grads
  micro = jax.tree.map(lambda x: x.reshape((steps, x.shape[0] // steps, *x.shape[1:])), batch)

  def one(carry, indexed):
    stats, grad_sum = carry
    micro_batch, index = indexed
    (loss, (logits, stats)), grads = grad_fn(params, stats, micro_batch, index)
    return (stats, jax.tree.map(jnp.add, grad_sum, grads)), (loss, logits)

  zeros = jax.tree.map(jnp.zeros_like, params)
  (batch_stats, grad_sum), (losses, logits) = jax.lax.scan(
      one, (batch_stats, zeros), (micro, jnp.arange(steps)))
  grads = jax.tree.map(lambda g: g / steps, grad_sum)
  return jnp.mean(losses), logits.reshape((-1, logits.shape[-1])), batch_stats, grads


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the train and eval steps need besides the state and the batch, in one value.

  `from_config` builds it from a training config; the evaluation step reads `model` and
  `num_classes` only, so `tx` and `learning_rate_fn` may stay None there.
  """

  model: nn.Module  # created with axis_name=AXIS (synchronized BatchNorm)
  num_classes: int
  tx: optax.GradientTransformation | None = None
  learning_rate_fn: Callable | None = None
  label_smoothing: float = 0.0
  seed: int = 0
  ema_decay: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mixup_switch_prob: float = 0.5
  grad_accum_steps: int = 1
  # False (config.trainable 'head', a linear probe): only the classifier trains; the backbone
  # runs as in evaluation (BatchNorm on its running statistics, no stochastic depth), gets no
  # gradient, and its parameters and statistics leave the step unchanged, bit for bit.
  train_backbone: bool = True

  @classmethod
  def from_config(cls, config, model: nn.Module, tx: optax.GradientTransformation,
                  learning_rate_fn: Callable, num_classes: int) -> StepSettings:
    return cls(model=model, num_classes=num_classes, tx=tx, learning_rate_fn=learning_rate_fn,
               label_smoothing=config.label_smoothing, seed=config.seed,
               ema_decay=config.ema_decay, mixup_alpha=config.mixup_alpha,
               cutmix_alpha=config.cutmix_alpha, mixup_switch_prob=config.mixup_switch_prob,
               grad_accum_steps=config.grad_accum_steps,
               train_backbone=config.trainable == "all")


def train_step(state: TrainState, batch, settings: StepSettings):
  """One optimizer step on this device's shard; returns the new state and averaged metrics.

  `settings.model` must have been created with `axis_name=AXIS`, so its BatchNorm statistics
  are the statistics of the global batch (synchronized BN). The step's randomness, stochastic
  depth's masks (the 'dropout' stream) and mixup/CutMix, comes from
  `step_rng(settings.seed, state.step)`; each device mixes its own shard. Under mixing,
  train_accuracy counts the label with the larger weight in each mixed example
  (`mixing.dominant_labels`). With `ema_decay` > 0 the state must hold an EMA (`with_ema`),
  updated after the optimizer step. With grad_accum_steps k > 1 the shard is split into k
  micro-batches whose gradients are averaged before the one update (accumulated_grads);
  BatchNorm then sees (and synchronizes) one micro-batch at a time. Without
  `train_backbone` the classifier alone learns, on the features of the backbone run as in
  evaluation, whose parameters and BatchNorm statistics stay as they were.
  """
  model, tx, num_classes = settings.model, settings.tx, settings.num_classes
  label_smoothing, ema_decay = settings.label_smoothing, settings.ema_decay
  mixup_alpha, cutmix_alpha = settings.mixup_alpha, settings.cutmix_alpha
  dropout_key, mix_key = jax.random.split(step_rng(settings.seed, state.step))
  images, labels = batch["image"], batch["label"]
  if mixup_alpha > 0 or cutmix_alpha > 0:
    mixed = mixing.mix_batch(mix_key, images, labels, num_classes=num_classes,
                             mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                             switch_prob=settings.mixup_switch_prob,
                             label_smoothing=label_smoothing)
    images, targets = mixed.images, mixed.targets
    accuracy_labels = mixing.dominant_labels(labels, mixed.perm, mixed.lam)
  else:
    targets = soft_targets(labels, num_classes, label_smoothing)
    accuracy_labels = labels

  def loss_fn(params, batch_stats, micro_batch, index):
    variables = {"params": params, "batch_stats": batch_stats}
    if settings.train_backbone:
      logits, updates = model.apply(variables, micro_batch["image"], train=True,
                                    mutable=["batch_stats"],
                                    rngs={"dropout": jax.random.fold_in(dropout_key, index)})
      batch_stats = updates.get("batch_stats", {})
    else:  # a linear probe: the backbone as in evaluation, differentiated through the head only
      variables["params"] = optim.stop_backbone_gradient(params)
      logits = model.apply(variables, micro_batch["image"], train=False)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, micro_batch["targets"]))
    return loss, (logits, batch_stats)

  inputs = {"image": images, "targets": targets}

  if state.dynamic_scale is not None:  # check_config: float16 runs have grad_accum_steps 1
    # float16: scale the loss so small gradients survive; skip steps whose gradients overflow.
    grad_fn = state.dynamic_scale.value_and_grad(
        lambda p: loss_fn(p, state.batch_stats, inputs, 0), has_aux=True, axis_name=AXIS)
    dynamic_scale, is_finite, (loss, (logits, batch_stats)), grads = grad_fn(state.params)
  else:
    loss, logits, batch_stats, grads = accumulated_grads(
        loss_fn, state.params, state.batch_stats, inputs, settings.grad_accum_steps)
    grads = jax.lax.pmean(grads, AXIS)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if not settings.train_backbone:  # p + 0 may turn -0.0 into 0.0: keep the arrays themselves
    params = optim.keep_backbone(params, state.params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  if ema_decay > 0:
    new_state = new_state.replace(
        ema_params=ema_update(state.ema_params, new_state.params, ema_decay),
        ema_batch_stats=ema_update(state.ema_batch_stats, new_state.batch_stats, ema_decay))
  if state.dynamic_scale is not None:
    # A skipped step changes nothing but the step count and the loss scale, the EMA included.
    keep = functools.partial(jax.tree.map, functools.partial(jnp.where, is_finite))
    new_state = new_state.replace(
        params=keep(new_state.params, state.params),
        opt_state=keep(new_state.opt_state, state.opt_state),
        batch_stats=keep(new_state.batch_stats, state.batch_stats),
        ema_params=keep(new_state.ema_params, state.ema_params),
        ema_batch_stats=keep(new_state.ema_batch_stats, state.ema_batch_stats),
        dynamic_scale=dynamic_scale)

  metrics = {
      "train_loss": loss,
      "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == accuracy_labels),
  }
  metrics = jax.lax.pmean(metrics, AXIS)
  metrics["learning_rate"] = settings.learning_rate_fn(state.step)
  return new_state, metrics


def eval_step(state: TrainState, batch, settings: StepSettings):
  """Sums of loss, top-1 and top-5 hits and real examples over all devices; where the state
  holds an EMA, the EMA weights' sums too, under 'ema_loss', 'ema_top1' and 'ema_top5'.

  Padding examples (mask 0) count nowhere, so the whole split is evaluated exactly once.
  Multi-view batches (B, V, H, W, C), ten crops or an image and its mirror, are scored
  by the mean of the views' logits.
  """
  model, num_classes = settings.model, settings.num_classes
  images = batch["image"]
  views = images.shape[1] if images.ndim == 5 else 0
  if views:
    images = images.reshape((-1, *images.shape[2:]))
  labels, mask = batch["label"], batch["mask"].astype(jnp.float32)

  def sums(params, batch_stats, prefix=""):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images, train=False)
    if views:
      logits = logits.reshape((-1, views, logits.shape[-1])).mean(axis=1)
    top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
    return {
        prefix + "loss": jnp.sum(cross_entropy(logits, labels, num_classes) * mask),
        prefix + "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
        prefix + "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
    }

  out = {**sums(state.params, state.batch_stats), "count": jnp.sum(mask)}
  if state.ema_params is not None:
    out.update(sums(state.ema_params, state.ema_batch_stats, "ema_"))
  return jax.lax.psum(out, AXIS)
