"""Saving and restoring the whole train state with orbax-checkpoint.

Checkpoints live in WORKDIR/checkpoints/<step>/ with two items: `state` (step, params,
batch_stats, optimizer state; one copy, so a checkpoint written on 8 devices restores on 1
and the other way round) and `meta` (JSON: model, dataset, config), which lets a run refuse
a workdir that holds another model before it touches anything. Orbax writes each step into
a temporary folder and renames it when complete, so a crash mid-write never leaves a
checkpoint that looks finished.

A save that fails (no permission, a full disk) reaches the run once, as a CheckpointError
that names the step, the folder and the cause, at the next save or at `close`, which every
exit path of a run calls: it waits for the started saves (bounded by orbax's asynchronous
save timeout) and releases orbax's threads whether a save failed or not.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from typing import Any

import jax
import orbax.checkpoint as ocp

from flax_resnet import fs
from flax_resnet.array_fit import array_shapes, misfit
from flax_resnet.errors import CheckpointError


class Checkpointer:
  """A thin CheckpointManager: asynchronous saves, newest-first restore with fallback.
  Close it (`close()`, or use it as a context manager) when done."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = str(fs.user_path(directory))  # local: absolute; gs://...: as given
    _check_writable(fs.user_path(directory))
    self._saving: int | None = None  # the step of the save started last
    self._failed = False
    self._quiet = _QuietOrbaxErrors()
    for logger in ("absl", "asyncio"):
      logging.getLogger(logger).addFilter(self._quiet)
    self._quiet.install()
    self.manager = ocp.CheckpointManager(
        fs.user_path(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            # a save cut short by a crash leaves `<step>.orbax-checkpoint-tmp`: remove it
            cleanup_tmp_directories=True),
        item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    """Starts writing `state` at `step`; returns while the write goes on in the background.
    A CheckpointError where this save, or the one before it, failed."""
    self.wait()  # orbax waits for the save before anyway; this names its failure by its step
    self._saving = step
    with self._failure_as_error(step):
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  @contextlib.contextmanager
  def _failure_as_error(self, step: int):
    """Turns an exception of orbax's saving into one CheckpointError, raised once."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - OSError locally, any storage error on gs://
      if self._failed:
        return
      self._failed = True
      done = [s for s in self.all_steps() if s != step]
      kept = f"the newest complete checkpoint is step {done[-1]}" if done else (
          "no checkpoint is complete")
      raise CheckpointError(
          f"saving the checkpoint of step {step} to {self.directory} failed "
          f"({_save_failure(e)}); {kept}. Free space or fix the folder's permissions, then "
          "run the same command to resume") from e

  def read_meta(self, step: int) -> dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"]

  def restore_latest(self, abstract_state, check_meta=None):
    """The newest readable checkpoint as (state, meta), or None where there is none.

    `abstract_state` gives the structure, shapes, dtypes and shardings to restore into; it
    may be a function of the checkpoint's meta, for states whose structure the saving run's
    config decided (an EMA kept or not).
    `check_meta(meta)` may raise CheckpointError when a checkpoint belongs to another
    experiment; that stops the run. A checkpoint that cannot be read (truncated, corrupt)
    is reported and the next older one is tried; nothing is deleted.
    """
    target_for = abstract_state if callable(abstract_state) else lambda meta: abstract_state
    failures = []
    for step in reversed(self.all_steps()):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any unreadable file means: try an older one
        failures.append((step, e))
        continue
      if check_meta is not None:
        check_meta(meta)
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_for(meta))
      try:
        saved = array_shapes(_saved_layout(fs.user_path(self.directory) / str(step) / "state"))
      except Exception as e:  # noqa: BLE001
        failures.append((step, e))
        continue
      # checked before orbax reads anything: a refused restore leaves no reads behind
      problems = misfit(saved, array_shapes(target))
      if problems:
        raise CheckpointError(
            f"the checkpoint at step {step} in {self.directory} does not fit this model "
            f"({problems}); use a new --workdir, or the config that wrote it")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
      except Exception as e:  # noqa: BLE001 - unreadable (truncated, corrupt): try older
        failures.append((step, e))
        continue
      for bad_step, error in failures:
        kept = self._set_aside(bad_step)
        print(f"warning: checkpoint at step {bad_step} in {self.directory} is unreadable "
              f"({_first_line(error)}); resuming from step {step} instead (the unreadable "
              f"one is kept as {kept})", file=sys.stderr)
      return restored["state"], meta
    if failures:
      steps = ", ".join(str(s) for s, _ in failures)
      raise CheckpointError(
          f"no readable checkpoint in {self.directory} (steps {steps} failed: "
          f"{_first_line(failures[0][1])}); move that folder away to start afresh")
    return None

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable checkpoint out of the manager's sight, so that the resumed run
    can save that step again, while its files stay for inspection."""
    directory = fs.user_path(self.directory)
    kept = directory / f"unreadable-{step}"
    if jax.process_index() == 0:
      (directory / str(step)).rename(kept)  # on gs://: a copy of each object, then a delete
    self.manager.reload()
    return str(kept)

  def wait(self) -> None:
    """Blocks until every started save is complete on disk; a CheckpointError if one failed."""
    if self._saving is None:
      return
    with self._failure_as_error(self._saving):
      self.manager.wait_until_finished()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Waits for the started saves and releases orbax's threads, whatever happens; raises a
    save's failure (once) after that. An unclosed Checkpointer's threads and event loop are
    left to the garbage collector, which ends them with tensorstore's 'Event loop is
    closed' errors."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001 - a failed save is reported by wait() already
        if not self._failed:
          raise
      if not self._failed:  # after a failure its debris comes until the process ends
        for logger in ("absl", "asyncio"):
          logging.getLogger(logger).removeFilter(self._quiet)
        self._quiet.uninstall()


class _QuietOrbaxErrors(logging.Filter):
  """Drops what a failed background write prints besides the one CheckpointError it becomes:
  orbax's error logs, one with its traceback from every thread the failure reached, asyncio's
  'Task exception was never retrieved' for each of orbax's failed writes, and the 'Event loop
  is closed' errors of tensorstore's callbacks that arrive after orbax closed its event loop
  (each printed as an unraisable exception, or through sys.excepthook: a hundred on a full
  disk). Nothing else is dropped."""

  def install(self) -> None:
    self.previous_excepthook, sys.excepthook = sys.excepthook, self.excepthook
    self.previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, self.unraisablehook

  def uninstall(self) -> None:
    if sys.excepthook == self.excepthook:
      sys.excepthook = self.previous_excepthook
    if sys.unraisablehook == self.unraisablehook:
      sys.unraisablehook = self.previous_unraisablehook

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    if record.name == "asyncio":
      return "orbax" not in record.getMessage()
    # absl may name its own module as the record's origin; orbax's records say orbax in
    # their path, their text or their traceback.
    frames = traceback.extract_tb(record.exc_info[2]) if record.exc_info else []
    return not ("orbax" in record.pathname or "orbax" in record.getMessage()
                or any("orbax" in frame.filename for frame in frames))

  @staticmethod
  def _closed_loop_callback(kind, value, tb) -> bool:
    frames = traceback.extract_tb(tb)
    return (kind is RuntimeError and str(value) == "Event loop is closed" and bool(frames)
            and frames[0].name == "call_soon_threadsafe")

  def excepthook(self, kind, value, tb) -> None:
    if not self._closed_loop_callback(kind, value, tb):
      self.previous_excepthook(kind, value, tb)

  def unraisablehook(self, unraisable) -> None:
    if not self._closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                      unraisable.exc_traceback):
      self.previous_unraisablehook(unraisable)


def _check_writable(directory) -> None:
  """A CheckpointError, before any training, where the checkpoints folder cannot be made or
  written to: a file of that name, no permission, an immutable folder."""
  problem = fs.write_problem(directory, f".write_test-{jax.process_index()}")
  if problem:
    raise CheckpointError(f"cannot write checkpoints to {directory} ({problem}); move what "
                          "is in the way, or choose another --workdir")


def holds_checkpoints(directory: str) -> bool:
  """Whether a checkpoints folder (local or gs://) holds a checkpoint; reads, writes nothing."""
  path = fs.user_path(directory)
  if not path.is_dir():
    return False
  manager = ocp.CheckpointManager(path, item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(create=False,
                                                                      read_only=True))
  try:
    return bool(manager.all_steps())
  finally:
    manager.close()


def read_state(directory: str, step: int | None = None):
  """The train state saved at `step` (default: the newest) in a checkpoints folder, as numpy
  arrays in a dict (step, params, batch_stats, opt_state, ...), for analysis outside a run."""
  return read_checkpoint(directory, step)[1]


def read_checkpoint(directory: str, step: int | None = None) -> tuple[int, dict, dict]:
  """(step, state, meta) of the checkpoint at `step` (default: the newest) in a checkpoints
  folder, the state as numpy arrays in a dict; a CheckpointError where the folder holds no
  checkpoint, not that step, or one that cannot be read."""
  directory = fs.user_path(directory)
  manager = ocp.CheckpointManager(directory, item_names=("state", "meta"),
                                 options=ocp.CheckpointManagerOptions(create=False,
                                                                      read_only=True))
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f"no checkpoint in {directory}")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(f"no checkpoint of step {step} in {directory}; it holds steps "
                            f"{', '.join(map(str, steps))}")
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any unreadable file: one message
      raise _unreadable(step, directory, steps, e) from e
  finally:
    manager.close()
  path = directory / str(step) / "state"
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                            _saved_layout(path))
      state = jax.device_get(checkpointer.restore(path, target))
  except Exception as e:  # noqa: BLE001
    raise _unreadable(step, directory, steps, e) from e
  return step, state, meta


def _unreadable(step: int, directory, steps: list[int], error: Exception) -> CheckpointError:
  older = [s for s in steps if s < step]
  return CheckpointError(
      f"the checkpoint at step {step} in {directory} cannot be read ({_first_line(error)})"
      + (f"; older ones: steps {', '.join(map(str, older))}" if older else ""))


def _save_failure(error: Exception) -> str:
  """The cause of a failed save in a few words: a full disk reaches orbax as an OSError or,
  where tensorstore's writer meets it, as a ValueError whose long text ends in the OS's
  words; either is told as the OS tells it."""
  if "No space left on device" in str(error):
    return "no space left on device"
  return f"{type(error).__name__}: {_first_line(error)}"


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:300]


def _saved_layout(path):
  """The state saved at `path` as a tree of orbax's array metadata (shape, dtype), read from
  its metadata file alone."""
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.metadata(path)
  finally:
    handler.close()
