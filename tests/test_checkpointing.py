"""Checkpoints (flax_resnet.checkpointing): a round trip, restoring on another device count,
the fallback past an unreadable checkpoint, and the refusal of another model's checkpoint."""

import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet import create_model, optim
from flax_resnet.checkpointing import Checkpointer, read_state
from flax_resnet.errors import CheckpointError
from flax_resnet.parallel import DataParallel
from flax_resnet.step import create_train_state
from step_utils import small_step_setup


def _state(widths=(8, 16, 16)):
  from configs import default
  config = default.get_config()
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 10, 100))
  model = create_model("cifar_resnet20", num_classes=10, widths=widths)
  return create_train_state(model, tx, (16, 16, 3), jax.random.key(0))


def _save(directory, steps, state):
  ckpt = Checkpointer(str(directory), keep=5)
  for step in steps:
    ckpt.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), {"model": "x",
                                                                          "step": step})
  ckpt.wait()
  ckpt.close()


@pytest.mark.slow
def test_round_trip_with_meta_and_read_state(tmp_path):
  state = _state()
  _save(tmp_path, [1, 2], state)
  ckpt = Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [1, 2]
  restored, meta = ckpt.restore_latest(jax.eval_shape(lambda: state))
  ckpt.close()
  assert meta == {"model": "x", "step": 2} and int(restored.step) == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params),
               jax.device_get(state.params))
  saved = read_state(str(tmp_path), step=1)
  assert int(saved["step"]) == 1
  np.testing.assert_array_equal(saved["params"]["fc"]["kernel"], state.params["fc"]["kernel"])


def test_empty_folder_restores_nothing(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "none"))
  assert ckpt.restore_latest(jax.eval_shape(_state)) is None
  ckpt.close()


@pytest.mark.slow
def test_unreadable_newest_falls_back_and_is_kept_aside(tmp_path, capsys):
  state = _state()
  _save(tmp_path, [1, 2], state)
  for root, _, files in os.walk(tmp_path / "2" / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  ckpt = Checkpointer(str(tmp_path))
  restored, meta = ckpt.restore_latest(jax.eval_shape(lambda: state))
  ckpt.close()
  assert int(restored.step) == 1 and meta["step"] == 1
  assert (tmp_path / "unreadable-2").is_dir()
  assert "checkpoint at step 2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
def test_checkpoint_of_another_shape_is_refused_untouched(tmp_path):
  """Refused from the saved arrays' shapes before orbax reads any array: no restore is left
  half done (its abandoned reads would warn later, in another test or a user's session)."""
  _save(tmp_path, [1], _state())
  other = _state(widths=(8, 16, 32))
  ckpt = Checkpointer(str(tmp_path))
  with pytest.raises(CheckpointError, match="does not fit this model") as refused:
    ckpt.restore_latest(jax.eval_shape(lambda: other))
  assert "params/fc/kernel is (16, 10), expected (32, 10)" in str(refused.value)
  ckpt.close()
  gc.collect()  # an abandoned read would warn here, an error under this test's filter
  assert sorted(os.listdir(tmp_path)) == ["1"]


@pytest.mark.slow
def test_checkpoint_from_eight_devices_restores_on_one(tmp_path):
  state, step, batches = small_step_setup()
  parallel8 = DataParallel("shard_map", jax.devices())
  mapped = parallel8.map_step(step)
  live = parallel8.put_state(state)
  live, _ = mapped(live, parallel8.put_batch(batches[0]))
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, parallel8.get_state(live), {"model": "x"})
  ckpt.wait()
  ckpt.close()

  parallel1 = DataParallel("pmap", jax.devices()[:1])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=parallel1.replicated_sharding()), state)
  with Checkpointer(str(tmp_path)) as ckpt:
    restored, meta = ckpt.restore_latest(target)
  assert meta == {"model": "x"}
  assert restored.params["fc"]["kernel"].sharding.device_set == {jax.devices()[0]}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored),
               jax.device_get(parallel8.get_state(live)))
  # the restored state trains on, in the other mode, on 1 device
  one = parallel1.map_step(step)
  after, _ = one(parallel1.put_state(restored), parallel1.put_batch(batches[1]))
  assert int(parallel1.get_state(after).step) == 2


def _closed_loop_error() -> RuntimeError:
  """The error that tensorstore's callbacks meet after orbax closed its event loop."""
  def call_soon_threadsafe():
    raise RuntimeError("Event loop is closed")
  try:
    call_soon_threadsafe()
  except RuntimeError as error:  # as tensorstore reports it: from the callback's frame on
    return error.with_traceback(error.__traceback__.tb_next)


def test_the_checkpointer_drops_the_debris_of_a_failed_save_and_nothing_else(tmp_path,
                                                                           monkeypatch):
  """What a failed background save prints besides its one CheckpointError: 'Event loop is
  closed' from tensorstore's callbacks (as unraisable exceptions or through sys.excepthook)
  and orbax's error logs, which absl may attribute to its own module."""
  import logging
  import sys
  import types
  shown = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: shown.append(u.exc_value))
  monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: shown.append(value))
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
  quiet = checkpointer._quiet
  try:
    debris, bug = _closed_loop_error(), ValueError("a bug of ours")
    for error in (debris, bug):
      sys.unraisablehook(types.SimpleNamespace(
          exc_type=type(error), exc_value=error, exc_traceback=error.__traceback__,
          err_msg=None, object=None))
      sys.excepthook(type(error), error, error.__traceback__)
    elsewhere = RuntimeError("Event loop is closed")  # not from a callback: shown
    sys.excepthook(RuntimeError, elsewhere, None)

    def record(message, pathname):
      return logging.LogRecord("absl", logging.ERROR, pathname, 1, message, None, None)
    absl_path = "/site-packages/absl/logging/__init__.py"
    assert not quiet.filter(record("x", "/site-packages/orbax/checkpoint/future.py"))
    assert not quiet.filter(record(
        "[thread=array_type_handler] _SignalingThread.run() raised an exception: ...\n"
        '  File "/site-packages/orbax/checkpoint/_src/futures/future.py", line 378', absl_path))
    assert quiet.filter(record("a step failed", absl_path))
    assert quiet.filter(logging.LogRecord("absl", logging.WARNING, absl_path, 1, "orbax", None,
                                          None))
  finally:
    checkpointer.close()
  # (the garbage collector may report other objects of earlier tests meanwhile)
  ours = [e for e in shown if any(e is x for x in (debris, bug, elsewhere))]
  assert ours == [bug, bug, elsewhere]
  # a clean close gives the hooks back
  assert sys.unraisablehook is not quiet.unraisablehook and sys.excepthook != quiet.excepthook
