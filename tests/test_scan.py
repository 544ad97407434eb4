"""`scan_blocks=True` (blocks 2..N of a stage compiled once with nn.scan) computes what the
default unrolled network computes, and the layout mappings between the two are exact inverses."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet import optim
from flax_resnet.models import create_model, scanned_to_unrolled, unrolled_to_scanned
from flax_resnet.parallel import DataParallel
from flax_resnet.train_step import AXIS, TrainState, create_train_state, train_step

# A narrow CIFAR ResNet-20 (3 blocks per stage, option A shortcuts) and a narrow bottleneck
# net with projection shortcuts everywhere (option C: the scanned blocks have a shortcut too).
SMALL = [
    ("cifar_resnet20", dict(widths=(4, 8, 16)), 8),
    ("resnet50", dict(widths=(4, 4, 8, 8), stage_sizes=(2, 3, 1, 2), shortcut="C",
                      num_classes=7), 32),
]


def _images(size, n=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol),
               a, b)


@pytest.mark.parametrize("name,overrides,size", SMALL)
def test_mapped_layout_matches_scanned_init(name, overrides, size):
  x = _images(size)
  unrolled = create_model(name, **overrides).init(jax.random.key(0), x)
  scanned = create_model(name, scan_blocks=True, **overrides).init(jax.random.key(0), x)
  assert "blocks" in scanned["params"]["stage1"] and "block2" not in scanned["params"]["stage1"]
  shapes = lambda t: jax.tree.map(jnp.shape, t)
  assert shapes(unrolled_to_scanned(unrolled)) == shapes(scanned)
  assert shapes(scanned_to_unrolled(scanned)) == shapes(unrolled)


@pytest.mark.parametrize("name,overrides,size", SMALL)
def test_round_trips_are_the_identity(name, overrides, size):
  x = _images(size)
  unrolled = create_model(name, **overrides).init(jax.random.key(0), x)
  scanned = create_model(name, scan_blocks=True, **overrides).init(jax.random.key(3), x)
  _assert_trees_close(scanned_to_unrolled(unrolled_to_scanned(unrolled)), unrolled, rtol=0,
                      atol=0)
  _assert_trees_close(unrolled_to_scanned(scanned_to_unrolled(scanned)), scanned, rtol=0,
                      atol=0)


@pytest.mark.parametrize("name,overrides,size", SMALL)
def test_same_logits_and_batch_stats(name, overrides, size):
  x = _images(size)
  model = create_model(name, **overrides)
  scanned_model = create_model(name, scan_blocks=True, **overrides)
  variables = model.init(jax.random.key(0), x)
  mapped = unrolled_to_scanned(variables)
  np.testing.assert_allclose(scanned_model.apply(mapped, x), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  scanned_logits, scanned_updates = scanned_model.apply(mapped, x, train=True,
                                                        mutable=["batch_stats"])
  # Train-mode BN in the last stage normalizes 4 values per channel here, which magnifies
  # float rounding (the two layouts fuse differently) to ~1e-4.
  np.testing.assert_allclose(scanned_logits, logits, rtol=1e-3, atol=1e-3)
  _assert_trees_close(scanned_to_unrolled(scanned_updates), updates, rtol=1e-4, atol=1e-5)


def _optimizer():
  """The library's SGD (momentum, weight decay on kernels only) at a constant rate."""
  config = types.SimpleNamespace(
      batch_size=8, learning_rate=0.1, lr_reference_batch_size=0, lr_schedule="constant",
      warmup_epochs=0.0, warmup_steps=0, momentum=0.9, nesterov=False, weight_decay=1e-4,
      weight_decay_on="kernels")
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=10, num_train_steps=10)
  return optim.create_optimizer(config, lr_fn), lr_fn


def _two_train_steps(model, state, batch, parallel):
  tx, lr_fn = _optimizer()
  step = parallel.map_step(functools.partial(train_step, model=model, tx=tx,
                                             learning_rate_fn=lr_fn,
                                             num_classes=model.num_classes))
  state = parallel.put_state(state)
  batch = parallel.put_batch(batch)
  for _ in range(2):
    state, metrics = step(state, batch)
  return parallel.get_state(state), parallel.get_metrics(metrics)


def test_same_train_steps_after_mapping():
  """Two data-parallel SGD steps (momentum, weight decay on kernels, synchronized BN) from the
  same variables end in the same state, whichever layout the network is compiled in."""
  name, overrides, size = SMALL[0]
  model = create_model(name, axis_name=AXIS, **overrides)
  scanned_model = create_model(name, axis_name=AXIS, scan_blocks=True, **overrides)
  parallel = DataParallel("shard_map", jax.devices()[:2])
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((8, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, model.num_classes, 8).astype(np.int32)}
  tx, _ = _optimizer()
  state = create_train_state(model, tx, (size, size, 3), jax.random.key(0))
  scanned_state = TrainState(
      step=state.step, params=unrolled_to_scanned(state.params),
      batch_stats=unrolled_to_scanned(state.batch_stats),
      opt_state=tx.init(unrolled_to_scanned(state.params)))

  state, metrics = _two_train_steps(model, state, batch, parallel)
  scanned_state, scanned_metrics = _two_train_steps(scanned_model, scanned_state, batch,
                                                    parallel)
  np.testing.assert_allclose(scanned_metrics["train_loss"], metrics["train_loss"], rtol=1e-5)
  _assert_trees_close(scanned_to_unrolled(scanned_state.params), state.params, rtol=1e-4,
                      atol=1e-5)
  _assert_trees_close(scanned_to_unrolled(scanned_state.batch_stats), state.batch_stats,
                      rtol=1e-4, atol=1e-5)


def test_mixed_layout_is_rejected():
  x = _images(8)
  params = create_model("cifar_resnet20", widths=(4, 8, 16)).init(jax.random.key(0), x)
  stage = dict(params["params"]["stage1"])
  del stage["block2"]
  with pytest.raises(ValueError, match="block1..blockN"):
    unrolled_to_scanned({"stage1": stage})
