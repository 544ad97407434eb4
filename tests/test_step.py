"""The train and eval steps (flax_resnet.step): their settings from a config, multi-view
evaluation, and half-precision steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flax_resnet import create_model, optim
from flax_resnet.parallel import AXIS, DataParallel
from flax_resnet.step import StepSettings, create_train_state, eval_step, train_step
from step_utils import small_step_setup


def test_step_settings_from_config_reads_each_field():
  config = default.get_config()
  config.update(label_smoothing=0.1, seed=7, ema_decay=0.99, mixup_alpha=0.2, cutmix_alpha=1.0,
                mixup_switch_prob=0.3, grad_accum_steps=2)
  model = create_model("cifar_resnet20", num_classes=10)
  lr = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr)
  settings = StepSettings.from_config(config, model, tx, lr, num_classes=10)
  assert (settings.model, settings.tx, settings.learning_rate_fn, settings.num_classes) == (
      model, tx, lr, 10)
  assert (settings.label_smoothing, settings.seed, settings.ema_decay, settings.mixup_alpha,
          settings.cutmix_alpha, settings.mixup_switch_prob, settings.grad_accum_steps) == (
              0.1, 7, 0.99, 0.2, 1.0, 0.3, 2)
  with pytest.raises(AttributeError):  # frozen: one value per run
    settings.seed = 1


@pytest.mark.slow
def test_eval_step_scores_views_by_their_mean_logits():
  """An image and its mirror as two views: the sums are those of the averaged logits, over
  the real (mask 1) examples only, whatever the number of devices."""
  state, _, batches = small_step_setup()
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), axis_name=AXIS)
  images = batches[0]["image"]
  labels = np.arange(16, dtype=np.int32) % 10
  mask = np.ones(16, np.float32)
  mask[-3:] = 0
  views = {"image": np.stack([images, images[:, :, ::-1]], axis=1), "label": labels,
           "mask": mask}
  parallel = DataParallel("shard_map", jax.devices())
  settings = StepSettings(model=model, num_classes=10)
  p_eval = parallel.map_eval(functools.partial(eval_step, settings=settings))
  sums = parallel.get_metrics(p_eval(parallel.put_state(state), parallel.put_batch(views)))

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  apply = functools.partial(model.clone(axis_name=None).apply, variables, train=False)
  logits = (apply(images) + apply(images[:, :, ::-1])) / 2
  real = mask == 1
  assert float(sums["count"]) == 13
  assert float(sums["top1"]) == np.sum(np.argmax(logits, -1)[real] == labels[real])
  top5 = np.argsort(-np.asarray(logits), -1)[:, :5]
  assert float(sums["top5"]) == np.sum((top5 == labels[:, None]).any(-1)[real])
  losses = -jax.nn.log_softmax(logits)[np.arange(16), labels]
  np.testing.assert_allclose(float(sums["loss"]), np.sum(losses[real]), rtol=1e-5)



@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.slow
def test_half_precision_step(dtype):
  """bfloat16 compute, or float16 with dynamic loss scaling: an overflowing step is skipped
  and the scale halves; a normal step trains and keeps float32 parameters."""
  from flax_resnet.loop import build_model
  config = default.get_config()
  config.update(dict(model="cifar_resnet20", batch_size=16, lr_reference_batch_size=0,
                     half_precision=True, half_precision_dtype=dtype))
  lr = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr)
  model = build_model(config, num_classes=10)
  state = create_train_state(model, tx, (16, 16, 3), jax.random.key(0),
                             use_loss_scaling=dtype == "float16")
  settings = StepSettings(model=model, num_classes=10, tx=tx, learning_rate_fn=lr)
  step = functools.partial(train_step, settings=settings)
  parallel = DataParallel("shard_map", jax.devices()[:2])
  mapped = parallel.map_step(step, donate_state=False)
  rng = np.random.default_rng(0)
  batch = dict(image=rng.normal(size=(16, 16, 16, 3)).astype(np.float32),
               label=rng.integers(0, 10, 16).astype(np.int32))
  live = parallel.put_state(state)
  after, metrics = mapped(live, parallel.put_batch(batch))
  after = jax.device_get(after)
  assert np.isfinite(parallel.get_metrics(metrics)["train_loss"])
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(after.params))
  assert not np.allclose(after.params["fc"]["kernel"], state.params["fc"]["kernel"])
  if dtype == "float16":
    # a loss scale so large that float16 gradients overflow: the step must change nothing
    huge = live.replace(dynamic_scale=live.dynamic_scale.replace(scale=jnp.float32(2.0**60)))
    skipped, _ = mapped(huge, parallel.put_batch(batch))
    skipped = jax.device_get(skipped)
    jax.tree.map(np.testing.assert_array_equal, skipped.params, state.params)
    assert float(skipped.dynamic_scale.scale) == 2.0**59
