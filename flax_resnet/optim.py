"""Learning-rate schedules and the optimizer: optax SGD with momentum and L2 weight decay, or
LARS for large batches.

The config's values are checked by flax_resnet.config.check_config before they get here.
"""

from __future__ import annotations

import jax
import optax


def effective_learning_rate(config) -> float:
  """The paper's linear scaling: lr = learning_rate * batch_size / lr_reference_batch_size."""
  if config.lr_reference_batch_size:
    return config.learning_rate * config.batch_size / config.lr_reference_batch_size
  return config.learning_rate


def warmup_length(config, steps_per_epoch: int) -> int:
  """Steps of warm-up: config.warmup_steps, else warmup_epochs' worth."""
  return int(config.warmup_steps or round(config.warmup_epochs * steps_per_epoch))


def decay_steps(config, steps_per_epoch: int) -> list[int]:
  """The steps at which the 'step' schedule divides the learning rate."""
  if config.lr_decay_steps:
    return [int(s) for s in config.lr_decay_steps]
  return [int(round(e * steps_per_epoch)) for e in config.lr_decay_epochs]


def schedule_notes(config, steps_per_epoch: int, num_train_steps: int) -> list[str]:
  """What the schedule will not do in a run of `num_train_steps`: a warm-up that does not end
  before the run does, 'step' decays that come after its end."""
  notes = []
  warmup = warmup_length(config, steps_per_epoch)
  if warmup >= num_train_steps:
    notes.append(f"the warm-up ({warmup} steps) lasts the whole run ({num_train_steps} steps): "
                 f"the learning rate never reaches its peak {effective_learning_rate(config):g}")
  if config.lr_schedule == "step":
    late = [b for b in decay_steps(config, steps_per_epoch) if b >= num_train_steps]
    if late:
      notes.append(f"the learning rate would decay at step(s) {', '.join(map(str, late))}, "
                   f"at or after the run's end at step {num_train_steps}: it does not")
  return notes


def create_learning_rate_fn(config, steps_per_epoch: int, num_train_steps: int) -> optax.Schedule:
  """'step' (the paper: /10 at given epochs or steps), 'cosine', 'polynomial' (MLPerf's LARS:
  (1 - t/T)^lr_power from the peak to lr_end) or 'constant', after a warm-up.

  Warm-up is 'linear' from 0 (Goyal et al.) or 'constant' at warmup_factor x lr (the paper's
  ResNet-110 on CIFAR, which trains at 0.01 for its first 400 iterations).
  """
  base_lr = effective_learning_rate(config)
  warmup_steps = warmup_length(config, steps_per_epoch)

  if config.lr_schedule == "step":
    boundaries = decay_steps(config, steps_per_epoch)
    main = optax.piecewise_constant_schedule(
        base_lr, {b - warmup_steps: config.lr_decay_factor for b in boundaries
                  if b > warmup_steps})
  elif config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(base_lr, max(1, num_train_steps - warmup_steps))
  elif config.lr_schedule == "polynomial":
    main = optax.polynomial_schedule(base_lr, config.lr_end, config.lr_power,
                                     max(1, num_train_steps - warmup_steps))
  else:  # 'constant'
    main = optax.constant_schedule(base_lr)
  if not warmup_steps:
    return main
  if config.warmup_mode == "linear":
    warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
  else:  # 'constant'
    warmup = optax.constant_schedule(config.warmup_factor * base_lr)
  return optax.join_schedules([warmup, main], [warmup_steps])


def weight_decay_mask(params, on: str):
  """Which parameters decay: 'kernels' (conv and dense weights: no BN scale/bias, no dense
  bias, as Goyal et al. and Flax's example) or 'all' (the paper's Caffe default)."""
  if on == "all":
    return jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(  # 'kernels'
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


# The classifier's module name in models.ResNet: "the head"; every other parameter is "the
# backbone".
HEAD = "fc"


def is_head(path) -> bool:
  """Whether the parameter at `path` (a jax tree path from the top of params) is the head's."""
  return getattr(path[0], "key", None) == HEAD


def parameter_groups(params):
  """'head' or 'backbone' for each parameter (optax.multi_transform's labels)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "head" if is_head(path) else "backbone", params)


def stop_backbone_gradient(params):
  """`params` with the backbone's behind jax.lax.stop_gradient: a loss of them
  differentiates through the head only (and the backward pass skips the backbone)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p if is_head(path) else jax.lax.stop_gradient(p), params)


def keep_backbone(new_params, old_params):
  """The head of `new_params` with the backbone of `old_params`, the very arrays."""
  return jax.tree_util.tree_map_with_path(
      lambda path, new, old: new if is_head(path) else old, new_params, old_params)


def create_optimizer(config, learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer of `config` (`base_optimizer`) over the parameters that train:
  config.trainable 'head' updates the head only (the backbone gets no step, no momentum and
  no weight decay); with 'all', config.backbone_lr_scale scales the backbone's updates, which
  for SGD and LARS is that multiple of the learning rate."""
  tx = base_optimizer(config, learning_rate_fn)
  if config.trainable == "head":
    return optax.multi_transform({"head": tx, "backbone": optax.set_to_zero()},
                                 parameter_groups)
  if config.backbone_lr_scale != 1:
    return optax.multi_transform(
        {"head": tx, "backbone": optax.chain(tx, optax.scale(config.backbone_lr_scale))},
        parameter_groups)
  return tx


def base_optimizer(config, learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """config.optimizer: 'sgd', with (Nesterov) momentum and weight decay added to the gradient
  as torch.optim.SGD, or 'lars' (optax.lars).

  LARS as in MLPerf's reference: the weight decay and the trust ratio
  trust_coefficient * |w| / |g + wd w| apply to conv and dense kernels only; biases and
  BatchNorm scales and offsets take plain momentum SGD steps at the scheduled rate. Weight
  decay follows config.weight_decay_on ('kernels', the default, is MLPerf's).

  Gradient accumulation (config.grad_accum_steps) happens before this, in step.train_step:
  the optimizer sees one mean gradient per step either way.
  """
  if config.optimizer == "lars":
    return optax.lars(
        learning_rate_fn, weight_decay=config.weight_decay,
        weight_decay_mask=lambda p: weight_decay_mask(p, config.weight_decay_on),
        trust_coefficient=config.lars_trust_coefficient, eps=0.0,
        trust_ratio_mask=lambda p: weight_decay_mask(p, "kernels"),
        momentum=config.momentum, nesterov=config.nesterov)
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay,
                                mask=lambda p: weight_decay_mask(p, config.weight_decay_on)),
      optax.sgd(learning_rate_fn, momentum=config.momentum or None, nesterov=config.nesterov),
  )
