"""The training tricks of modern recipes: EMA of the weights, mixup and CutMix, stochastic
depth's rng in the train step, their config fields, and a resume with them on."""

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import default
from flax_resnet import create_model, mixing, optim, scan_layout
from flax_resnet.checkpointing import Checkpointer
from flax_resnet.config import ConfigError, check_config
from flax_resnet.loop import restore_or_initialize
from flax_resnet.parallel import AXIS, DataParallel
from flax_resnet.step import (StepSettings, create_train_state, ema_update, eval_step, step_rng,
                              train_step, with_ema)
from train_utils import assert_trees_equal, records, run_train, saved_state


# --- EMA ---------------------------------------------------------------------------------------

def test_ema_after_k_steps_is_the_closed_form():
  """ema_k = d^k * ema_0 + sum_i (1 - d) d^(k - i) * p_i for the parameters p_1..p_k."""
  rng = np.random.default_rng(0)
  init = {"a": rng.normal(size=(3,)), "b": {"c": rng.normal(size=(2, 2))}}
  params = [jax.tree.map(lambda x: rng.normal(size=x.shape), init) for _ in range(5)]
  decay, ema = 0.9, init
  for p in params:
    ema = ema_update(ema, p, decay)
  k = len(params)
  expected = jax.tree.map(
      lambda x0, *ps: decay**k * x0 + sum((1 - decay) * decay**(k - i) * p
                                          for i, p in enumerate(ps, 1)), init, *params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-12), ema, expected)


# --- mixup and CutMix ----------------------------------------------------------------------

def _index_images(batch=8, size=10):
  """Each image constant at its own index: a mixed pixel tells where it came from."""
  return jnp.broadcast_to(jnp.arange(batch, dtype=jnp.float32)[:, None, None, None],
                          (batch, size, size, 1))


def test_mixup_mixes_images_and_labels_by_lambda():
  images, labels = _index_images(), jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
  for seed in range(3):
    out = mixing.mix_batch(jax.random.key(seed), images, labels, num_classes=4,
                           mixup_alpha=0.4, cutmix_alpha=0.0)
    lam, perm = float(out.lam), np.asarray(out.perm)
    assert 0 <= lam <= 1 and sorted(perm) == list(range(8))
    np.testing.assert_allclose(out.images[:, 0, 0, 0], lam * np.arange(8) + (1 - lam) * perm,
                               rtol=1e-6)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(out.targets, lam * onehot + (1 - lam) * onehot[perm], rtol=1e-6)


def test_label_smoothing_then_mixing():
  labels, perm, lam = jnp.array([0, 2]), jnp.array([1, 0]), 0.7
  smooth = optax.smooth_labels(np.eye(3)[[0, 2]], 0.3)
  np.testing.assert_allclose(mixing.mix_targets(labels, perm, lam, 3, 0.3),
                             lam * smooth + (1 - lam) * smooth[[1, 0]], rtol=1e-6)
  np.testing.assert_allclose(np.sum(mixing.mix_targets(labels, perm, lam, 3, 0.3), -1), 1.0,
                             rtol=1e-6)


def test_cutmix_box_lambda_is_the_true_area_and_labels_follow_it():
  """Pixels from the partner fill exactly the box; lam (and the targets) are the uncovered
  share of the image as clipped, which for boxes at the border is above the drawn lam."""
  images, labels = _index_images(), jnp.arange(8) % 4
  clipped = 0
  for seed in range(12):
    out = mixing.mix_batch(jax.random.key(seed), images, labels, num_classes=4,
                           mixup_alpha=0.0, cutmix_alpha=1.0)
    perm, lam = np.asarray(out.perm), float(out.lam)
    from_partner = np.asarray(out.images[..., 0]) == perm[:, None, None]
    own = np.asarray(out.images[..., 0]) == np.arange(8)[:, None, None]
    assert np.all(from_partner | own)
    moved = perm != np.arange(8)
    covered = from_partner[moved].mean(axis=(1, 2))
    np.testing.assert_allclose(covered, 1 - lam, atol=1e-6)  # the same box for all
    rows, cols = np.nonzero(from_partner[moved][0])
    if rows.size:  # a rectangle
      assert rows.size == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(out.targets, lam * onehot + (1 - lam) * onehot[perm], rtol=1e-6)
    clipped += 0 < rows.size and (rows.min() == 0 or cols.min() == 0 or rows.max() == 9
                                  or cols.max() == 9)
  assert clipped  # some boxes met the border


def test_cutmix_box_of_the_drawn_area_inside_the_image():
  top, bottom, left, right = mixing.cutmix_box(jax.random.key(0), 100, 100, jnp.float32(0.64))
  # cut side floor(100 * sqrt(0.36)) = 60, centered: 30 either side, clipped to [0, 100]
  assert int(bottom - top) <= 60 and int(right - left) <= 60
  images = jnp.zeros((2, 100, 100, 1)).at[1].set(1.0)
  mixed, lam = mixing.cutmix_images(images, jnp.array([1, 0]), (20, 80, 10, 70))
  assert float(lam) == pytest.approx(1 - 0.36)
  assert float(mixed[0].sum()) == 3600 and float(mixed[1].sum()) == 10_000 - 3600


def test_switch_prob_chooses_cutmix_or_mixup():
  images, labels = _index_images(), jnp.arange(8) % 4
  for prob, cutmix in ((1.0, True), (0.0, False)):
    out = mixing.mix_batch(jax.random.key(3), images, labels, num_classes=4, mixup_alpha=1.0,
                           cutmix_alpha=1.0, switch_prob=prob)
    integral = np.all(np.asarray(out.images) == np.round(np.asarray(out.images)))
    assert integral == cutmix


def test_dominant_label():
  labels, perm = jnp.array([0, 1, 2]), jnp.array([2, 0, 1])
  assert list(mixing.dominant_labels(labels, perm, 0.6)) == [0, 1, 2]
  assert list(mixing.dominant_labels(labels, perm, 0.4)) == [2, 0, 1]


# --- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("drop_path_rate", 1.0, "drop_path_rate must be in \\[0, 1\\)"),
    ("drop_path_rate", -0.1, "drop_path_rate must be in"),
    ("ema_decay", 1.0, "ema_decay must be in \\[0, 1\\)"),
    ("mixup_alpha", -1.0, "mixup_alpha must be >= 0"),
    ("cutmix_alpha", -0.5, "cutmix_alpha must be >= 0"),
    ("mixup_switch_prob", 1.5, "mixup_switch_prob must be a probability"),
])
def test_bad_trick_values_are_refused(field, value, message):
  config = default.get_config()
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    check_config(config)


def test_tricks_are_off_by_default_and_drop_path_needs_shortcuts():
  config = default.get_config()
  assert (config.drop_path_rate, config.ema_decay, config.mixup_alpha, config.cutmix_alpha,
          config.mixup_switch_prob) == (0.0, 0.0, 0.0, 0.0, 0.5)
  config.update(dict(drop_path_rate=0.1, ema_decay=0.999, mixup_alpha=0.2, cutmix_alpha=1.0))
  check_config(config)
  config.model = "plain18"
  with pytest.raises(ConfigError, match="plain18 has no shortcuts"):
    check_config(config)


# --- the train step ------------------------------------------------------------------------

def _setup(drop_path_rate=0.0, ema=False, batch_size=16, **step_args):
  config = default.get_config()
  config.batch_size, config.lr_reference_batch_size = batch_size, 0
  lr = optim.create_learning_rate_fn(config, 10, 100)
  tx = optim.create_optimizer(config, lr)
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), axis_name=AXIS,
                       drop_path_rate=drop_path_rate)
  state = create_train_state(model, tx, (16, 16, 3), jax.random.key(0), ema=ema)
  settings = StepSettings(model=model, num_classes=10, tx=tx, learning_rate_fn=lr, **step_args)
  step = functools.partial(train_step, settings=settings)
  rng = np.random.default_rng(0)
  batch = dict(image=rng.normal(size=(batch_size, 16, 16, 3)).astype(np.float32),
               label=rng.integers(0, 10, batch_size).astype(np.int32))
  return model, state, step, batch


def test_step_rng_is_a_function_of_seed_step_and_device():
  parallel = DataParallel("shard_map", jax.devices())
  keys = jax.jit(jax.shard_map(
      lambda seed_step: jax.random.key_data(step_rng(seed_step[0], seed_step[1]))[None],
      mesh=parallel.mesh, in_specs=P(), out_specs=P(AXIS), check_vma=False))
  a, again = keys(jnp.array([0, 5])), keys(jnp.array([0, 5]))
  np.testing.assert_array_equal(a, again)
  assert len({tuple(k) for k in np.asarray(a)}) == 8           # one per device
  assert not np.array_equal(a, keys(jnp.array([0, 6])))        # another step
  assert not np.array_equal(a, keys(jnp.array([1, 5])))        # another seed


@pytest.mark.slow
def test_drop_path_masks_follow_the_step():
  """The same (seed, step) draws the same masks; another step, other masks. Without drop
  path the step number changes nothing in the loss."""
  for rate, differs in ((0.5, True), (0.0, False)):
    _, state, step, batch = _setup(drop_path_rate=rate, seed=3)
    parallel = DataParallel("shard_map", jax.devices())
    mapped = parallel.map_step(step, donate_state=False)
    live, data = parallel.put_state(state), parallel.put_batch(batch)
    loss = lambda s: float(parallel.get_metrics(mapped(s, data)[1])["train_loss"])
    first = loss(live)
    assert loss(live) == first
    assert (loss(live.replace(step=live.step + 1)) != first) == differs


@pytest.mark.slow
def test_train_step_with_every_trick_on_eight_devices():
  model, state, step, batch = _setup(drop_path_rate=0.2, ema=True, ema_decay=0.9,
                                     mixup_alpha=0.2, cutmix_alpha=1.0, label_smoothing=0.1)
  parallel = DataParallel("shard_map", jax.devices())
  mapped = parallel.map_step(step)
  live = parallel.put_state(state)
  for _ in range(2):
    live, metrics = mapped(live, parallel.put_batch(batch))
  metrics = parallel.get_metrics(metrics)
  assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["train_accuracy"] <= 1
  after = jax.device_get(parallel.get_state(live))
  assert int(after.step) == 2
  kernel = lambda tree: np.asarray(tree["fc"]["kernel"])
  # two steps of decay 0.9 from the initial weights: 0.81 init + 0.09 p1 + 0.1 p2
  assert not np.allclose(kernel(after.ema_params), kernel(after.params))
  assert not np.allclose(kernel(after.ema_params), kernel(state.params))
  assert jax.tree.structure(after.ema_batch_stats) == jax.tree.structure(after.batch_stats)

  settings = StepSettings(model=model, num_classes=10)
  p_eval = parallel.map_eval(functools.partial(eval_step, settings=settings))
  sums = parallel.get_metrics(p_eval(live, parallel.put_batch(
      {**batch, "mask": np.ones(16, np.float32)})))
  assert {"loss", "top1", "top5", "count", "ema_loss", "ema_top1", "ema_top5"} == set(sums)
  assert np.isfinite(sums["ema_loss"]) and float(sums["count"]) == 16


@pytest.mark.slow
def test_ema_is_none_when_off_and_converted_with_the_scanned_layout():
  _, state, _, _ = _setup()
  assert state.ema_params is None and state.ema_batch_stats is None
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), scan_blocks=True)
  tx = optax.sgd(0.1)
  scanned = create_train_state(model, tx, (16, 16, 3), jax.random.key(0), ema=True)
  unrolled = scan_layout.to_unrolled_layout(scanned)
  assert jax.tree.structure(unrolled.ema_params) == jax.tree.structure(unrolled.params)
  assert "block3" in unrolled.ema_params["stage1"]
  assert_trees_equal(scan_layout.to_scanned_layout(unrolled), scanned)


@pytest.mark.parametrize("saved_ema,want_ema", [(False, True), (True, False), (True, True)])
def test_restore_switches_ema_on_or_off(tmp_path, saved_ema, want_ema):
  """A checkpoint is read in the structure its run saved (an older run's: without EMA); an
  EMA newly switched on starts at the restored weights."""
  _, state, _, _ = _setup()
  tx = optim.create_optimizer(default.get_config(), lambda s: 0.1)
  saved = with_ema(state) if saved_ema else state
  saved = saved.replace(step=jnp.int32(7))
  with Checkpointer(str(tmp_path), keep=1) as ckpt:
    ckpt.save(7, saved, {"config": {"ema_decay": 0.9} if saved_ema else {}})
  model = create_model("cifar_resnet20", num_classes=10, widths=(8, 16, 16), axis_name=AXIS)
  make_state = functools.partial(create_train_state, model, tx, (16, 16, 3), ema=want_ema)
  identity = lambda tree: tree
  parallel = DataParallel("shard_map", jax.devices()[:1])
  with Checkpointer(str(tmp_path)) as ckpt:
    restored, start = restore_or_initialize(ckpt, make_state, 0, identity, identity, parallel,
                                            lambda meta: None, ema=want_ema)
  restored = jax.device_get(restored)
  assert start == 7
  assert_trees_equal(restored.params, state.params)
  if want_ema:
    assert_trees_equal(restored.ema_params, state.params)
    assert_trees_equal(restored.ema_batch_stats, state.batch_stats)
  else:
    assert restored.ema_params is None and restored.ema_batch_stats is None


# --- train.py ------------------------------------------------------------------------------

TRICKS = ["--config.drop_path_rate=0.2", "--config.ema_decay=0.9", "--config.mixup_alpha=0.2",
          "--config.cutmix_alpha=1.0", "--config.batch_size=32", "--config.log_every_steps=2",
          "--config.checkpoint_every_steps=3", "--config.eval_every_steps=1000",
          "--config.eval_batch_size=1000", "--config.eval_examples=1000",
          "--config.eval_flip=False", "--config.plot=False", "--config.cache=False",
          "--config.shuffle_buffer_size=1024"]


@pytest.mark.slow
def test_train_py_resumes_bit_identically_with_the_tricks_on(tmp_path, fashion_mnist_data_dir):
  """A run of 6 steps, and a run resumed from the first one's checkpoint of step 3 (as a run
  killed after it would): the same saved state at step 6, EMA included."""
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  result = run_train(whole, fashion_mnist_data_dir, *TRICKS, "--config.num_train_steps=6",
                     devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "EMA accuracy" in result.stdout and "(EMA weights: " in result.stdout
  assert "ema_eval_accuracy" in records(whole)[-1]
  shutil.copytree(whole / "checkpoints" / "3", parts / "checkpoints" / "3")
  result = run_train(parts, fashion_mnist_data_dir, *TRICKS, "--config.num_train_steps=6",
                     devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming at step 3" in result.stdout
  a, b = saved_state(whole, 6), saved_state(parts, 6)
  assert "ema_params" in a and "ema_batch_stats" in a
  assert_trees_equal(a, b)
