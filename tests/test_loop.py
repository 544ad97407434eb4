"""The training loop's named parts, each on its own: the metrics buffer and its divergence
check, the checkpoint layout, restore-or-initialize and evaluate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_resnet import create_model
from flax_resnet.checkpointing import Checkpointer
from flax_resnet.errors import CheckpointError, TrainingDiverged
from flax_resnet.loop import (MetricsBuffer, checkpoint_layout, evaluate,
                              restore_or_initialize)
from flax_resnet.parallel import AXIS, DataParallel
from flax_resnet.step import StepSettings, create_train_state, eval_step
from train_utils import assert_trees_equal


def _host(metrics):
  return jax.tree.map(np.asarray, metrics)


class _Checkpoints:
  """The part of a Checkpointer the metrics buffer reads."""

  def __init__(self, steps=(), directory="/runs/x/checkpoints"):
    self.steps, self.directory = list(steps), directory

  def all_steps(self):
    return self.steps


def test_metrics_buffer_writes_the_mean_of_the_pending_steps_at_each_flush():
  written = []
  buffer = MetricsBuffer(_host, lambda step, m: written.append((step, m)), _Checkpoints())
  assert buffer.flush() is None and written == []
  for step, (loss, lr) in enumerate([(1.0, 0.1), (3.0, 0.05)], start=1):
    buffer.add(step, {"train_loss": jnp.float32(loss), "train_accuracy": jnp.float32(step / 4),
                      "learning_rate": jnp.float32(lr)})
  mean = buffer.flush()
  assert mean == pytest.approx({"train_loss": 2.0, "train_accuracy": 0.375,
                                "learning_rate": 0.05})
  assert written == [(2, mean)]  # written at the last step it covers, whoever flushed
  assert buffer.flush() is None and len(written) == 1  # nothing pending after a flush


@pytest.mark.parametrize("steps,kept", [
    ([5], "The newest checkpoint, step 5 in /runs/x/checkpoints, was written before it"),
    ([], "No checkpoint was written before it"),
])
def test_metrics_buffer_names_the_first_diverged_step_and_writes_the_steps_before(steps, kept):
  written = []
  buffer = MetricsBuffer(_host, lambda step, m: written.append((step, m)), _Checkpoints(steps))
  for step, loss in ((7, 1.0), (8, float("nan")), (9, float("inf"))):
    buffer.add(step, {"train_loss": jnp.float32(loss), "learning_rate": jnp.float32(0.1)})
  with pytest.raises(TrainingDiverged, match="became nan at step 8") as error:
    buffer.flush()
  assert kept in str(error.value)
  assert written == [(7, pytest.approx({"train_loss": 1.0, "learning_rate": 0.1}))]


@pytest.mark.slow
def test_checkpoint_layout_unrolls_scanned_models_only():
  x = jnp.zeros((1, 8, 8, 3))
  unrolled = create_model("cifar_resnet20", widths=(4, 4, 4))
  scanned = create_model("cifar_resnet20", widths=(4, 4, 4), scan_blocks=True)
  to_ckpt, from_ckpt = checkpoint_layout(unrolled)
  variables = unrolled.init(jax.random.key(0), x)
  assert to_ckpt(variables) is variables and from_ckpt(variables) is variables
  to_ckpt, from_ckpt = checkpoint_layout(scanned)
  scanned_variables = from_ckpt(variables)
  assert "blocks" in scanned_variables["params"]["stage1"]
  assert jax.tree.structure(scanned_variables) == jax.tree.structure(
      scanned.init(jax.random.key(0), x))
  assert_trees_equal(to_ckpt(scanned_variables), variables)


def _state_maker(model):
  tx = optax.sgd(0.1, momentum=0.9)
  return functools.partial(create_train_state, model, tx, (8, 8, 3))


@pytest.mark.slow
def test_restore_or_initialize(tmp_path):
  model = create_model("cifar_resnet20", widths=(4, 4, 4), num_classes=3, axis_name=AXIS)
  make_state = _state_maker(model)
  identity = lambda tree: tree
  parallel = DataParallel("shard_map", jax.devices()[:2])
  checkpointer = Checkpointer(str(tmp_path / "ckpts"), keep=2, async_save=False)
  state, step = restore_or_initialize(checkpointer, make_state, 3, identity, identity, parallel,
                                      check_meta=lambda meta: None)
  assert step == 0  # nothing saved: a fresh state from the seed
  assert_trees_equal(jax.device_get(state.params),
                     jax.device_get(jax.jit(make_state)(jax.random.key(3)).params))
  saved = make_state(jax.random.key(5)).replace(step=jnp.int32(12))
  checkpointer.save(12, saved, {"config": {}})
  checkpointer.wait()
  state, step = restore_or_initialize(checkpointer, make_state, 3, identity, identity, parallel,
                                      check_meta=lambda meta: None)
  assert step == 12
  assert_trees_equal(jax.device_get(state.params), jax.device_get(saved.params))

  def refuse(meta):
    raise CheckpointError("another run")
  with pytest.raises(CheckpointError, match="another run"):
    restore_or_initialize(checkpointer, make_state, 3, identity, identity, parallel, refuse)
  checkpointer.close()


@pytest.mark.slow
def test_evaluate_counts_every_real_example_once():
  model = create_model("cifar_resnet20", widths=(4, 4, 4), num_classes=3, axis_name=AXIS)
  parallel = DataParallel("shard_map", jax.devices()[:2])
  state = parallel.put_state(_state_maker(model)(jax.random.key(0)))
  settings = StepSettings(model=model, num_classes=3)
  p_eval = parallel.map_eval(functools.partial(eval_step, settings=settings))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(4, 8, 8, 3)).astype(np.float32),
              "label": np.array([0, 1, 2, 0], np.int32),
              "mask": np.array(mask, np.float32)} for mask in ([1, 1, 1, 1], [1, 1, 0, 0])]
  result = evaluate(p_eval, state, batches, parallel)
  assert result["eval_examples"] == 6
  assert 0 <= result["eval_accuracy"] <= result["eval_top5_accuracy"] == 1.0
  logits = model.apply({"params": jax.device_get(state.params),
                        "batch_stats": jax.device_get(state.batch_stats)},
                       np.concatenate([b["image"] for b in batches])[:6], train=False)
  labels = np.concatenate([b["label"] for b in batches])[:6]
  expected = float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
  assert result["eval_loss"] == pytest.approx(expected, rel=1e-4)
  assert result["eval_accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)))
