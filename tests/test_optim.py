"""The large-batch options: LARS's masks, the polynomial schedule, gradient accumulation and
the checks of their config fields."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_resnet import default_config, optim
from flax_resnet.config import check_config
from flax_resnet.errors import ConfigError
from flax_resnet.parallel import AXIS
from flax_resnet.step import StepSettings, create_train_state, train_step


def _config(**fields):
  config = default_config()
  config.update(dict(model="cifar_resnet20", dataset="fashion_mnist", weight_decay=1e-2,
                     momentum=0.0), **fields)
  return config


def test_lars_applies_trust_ratio_and_decay_to_kernels_only():
  config = _config(optimizer="lars", lars_trust_coefficient=0.001)
  tx = optim.create_optimizer(config, optax.constant_schedule(1.0))
  params = {"conv": {"kernel": jnp.full((3, 3), 2.0)}, "dense": {"bias": jnp.full((3,), 2.0)},
            "bn": {"scale": jnp.full((3,), 2.0), "bias": jnp.full((3,), 2.0)}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # kernel: -lr * trust * |w| / |g + wd w| * (g + wd w)
  g = 0.5 + 1e-2 * 2.0
  ratio = 0.001 * np.linalg.norm(np.full((3, 3), 2.0)) / np.linalg.norm(np.full((3, 3), g))
  np.testing.assert_allclose(updates["conv"]["kernel"], -ratio * g, rtol=1e-5)
  # biases and BatchNorm parameters: the plain gradient step, neither ratio nor decay
  for leaf in (updates["dense"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
    np.testing.assert_allclose(leaf, -0.5, rtol=1e-6)


def test_polynomial_schedule_warms_up_then_decays_to_lr_end():
  config = _config(lr_schedule="polynomial", lr_power=2.0, lr_end=0.001, learning_rate=1.0,
                   lr_reference_batch_size=0, warmup_steps=10, warmup_epochs=0.0)
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=10, num_train_steps=110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0)
  # halfway through the decay: end + (peak - end) * (1 - 1/2)^2
  assert float(lr(60)) == pytest.approx(0.001 + 0.999 * 0.25, rel=1e-5)
  assert float(lr(110)) == pytest.approx(0.001)


class TinyDense(nn.Module):
  """No BatchNorm: accumulating gradients must give exactly the big batch's gradient."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
@pytest.mark.slow
def test_grad_accumulation_equals_one_batch_k_times_larger(optimizer):
  config = _config(optimizer=optimizer, momentum=0.9, learning_rate=0.1, batch_size=16)
  lr_fn = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr_fn)
  model = TinyDense()
  state = create_train_state(model, tx, (4, 4, 1), jax.random.key(0))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(1, 16, 4, 4, 1)).astype(np.float32),
              "label": rng.integers(0, 3, size=(1, 16)).astype(np.int32)} for _ in range(2)]

  def run(k):
    settings = StepSettings(model=model, tx=tx, learning_rate_fn=lr_fn, num_classes=3,
                            grad_accum_steps=k)
    step = jax.vmap(lambda s, b: train_step(s, b, settings),
                    in_axes=(None, 0), out_axes=(None, 0), axis_name=AXIS)
    s, losses = state, []
    for batch in batches:  # two updates: the second goes through momentum / trust ratio
      s, metrics = step(s, batch)
      losses.append(float(metrics["train_loss"][0]))
    return s, losses

  (one, one_losses), (four, four_losses) = run(1), run(4)
  assert int(four.step) == 2
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one_losses, four_losses, rtol=1e-5)
  assert not np.allclose(jax.tree.leaves(one.params)[0], jax.tree.leaves(state.params)[0])


@pytest.mark.parametrize("fields,message", [
    ({"optimizer": "adam"}, "config.optimizer='adam' is not one of"),
    ({"lr_schedule": "poly"}, "config.lr_schedule='poly' is not one of"),
    ({"grad_accum_steps": 0}, "config.grad_accum_steps must be an integer >= 1"),
    ({"grad_accum_steps": 2, "half_precision": True, "half_precision_dtype": "float16"},
     "does not combine with float16"),
    ({"lr_power": 0.0}, "config.lr_power must be positive"),
    ({"lr_end": -1.0}, "config.lr_end must be >= 0"),
    ({"lr_schedule": "polynomial", "lr_end": 5.0}, "must be below the peak learning rate"),
    ({"lars_trust_coefficient": 0.0}, "config.lars_trust_coefficient must be positive"),
])
def test_large_batch_fields_are_checked(fields, message):
  config = _config(**fields)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
    check_config(config)


def test_large_batch_configs_are_valid():
  from configs import resnet50_goyal, resnet50_lars
  goyal, lars = resnet50_goyal.get_config(), resnet50_lars.get_config()
  check_config(goyal)
  check_config(lars)
  assert optim.effective_learning_rate(goyal) == pytest.approx(0.1 * 8192 / 256)
  assert lars.optimizer == "lars" and lars.lr_schedule == "polynomial"


def test_schedule_notes_say_what_a_short_run_will_not_do():
  config = _config(warmup_epochs=2.0, lr_schedule="step", lr_decay_epochs=(1, 30),
                   learning_rate=0.1, lr_reference_batch_size=0)
  notes = optim.schedule_notes(config, steps_per_epoch=10, num_train_steps=20)
  assert notes == [
      "the warm-up (20 steps) lasts the whole run (20 steps): the learning rate never reaches "
      "its peak 0.1",
      "the learning rate would decay at step(s) 300, at or after the run's end at step 20: it "
      "does not"]
  config.warmup_epochs, config.lr_decay_epochs = 1.0, (1,)
  assert optim.schedule_notes(config, steps_per_epoch=10, num_train_steps=20) == []
