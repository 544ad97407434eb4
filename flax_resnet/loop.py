"""The training loop: `train_and_evaluate(config, workdir)`, importable from a notebook.

Builds the model, optimizer and input pipeline from the config, resumes from the newest
checkpoint in WORKDIR/checkpoints, trains with the data-parallel step, evaluates over the
whole evaluation split, and writes metrics, TensorBoard summaries, checkpoints and a plot.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import optim
from flax_resnet.checkpointing import Checkpointer
from flax_resnet.config import check_config
from flax_resnet.errors import CheckpointError, ConfigError, TrainingDiverged
from flax_resnet.models import MODEL_SPECS, create_model, to_scanned_layout, to_unrolled_layout
from flax_resnet.parallel import DataParallel
from flax_resnet.reporting import Reporter
from flax_resnet.step import create_train_state, eval_step, train_step


def compute_dtype(config):
  if not config.half_precision:
    return jnp.float32
  return jnp.float16 if config.half_precision_dtype == "float16" else jnp.bfloat16


def build_model(config, num_classes: int):
  widths = {"widths": tuple(config.widths)} if config.widths else {}  # (): the model's own
  return create_model(config.model, num_classes=num_classes, shortcut=config.shortcut,
                      stride_in_1x1=config.stride_in_1x1,
                      zero_init_residual=config.zero_init_residual,
                      scan_blocks=config.scan_blocks, dtype=compute_dtype(config),
                      axis_name=AXIS, **widths)


def _prepare_workdir(workdir: str) -> str:
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"cannot write to workdir {workdir} ({e.strerror}); choose a folder "
                      "you can write to with --workdir") from None
  return workdir


class _Preemption:
  """Turns SIGTERM (a preempted VM, a cluster scheduler) into a request to save and stop."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook kernels): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config, workdir: str, devices=None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming there if it holds checkpoints).

  Returns the final evaluation metrics (eval_accuracy, eval_top5_accuracy, eval_loss) and
  the number of steps trained.
  """
  from flax_resnet.data import pipeline as input_pipeline  # imports TensorFlow

  check_config(config)
  workdir = _prepare_workdir(workdir)
  info = input_pipeline.dataset_info(config)
  parallel = DataParallel(config.parallelism, devices)
  eval_batch_size = config.eval_batch_size or config.batch_size
  parallel.check_batch_size(config.batch_size, "batch_size")
  parallel.check_batch_size(eval_batch_size, "eval_batch_size")

  steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
  num_train_steps = (config.num_train_steps if config.num_train_steps > 0
                     else int(round(config.num_epochs * steps_per_epoch)))
  eval_every = config.eval_every_steps or steps_per_epoch
  checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
  num_classes = config.num_classes or info.num_classes

  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch, num_train_steps)
  tx = optim.create_optimizer(config, learning_rate_fn)
  model = build_model(config, num_classes)
  make_state = functools.partial(
      create_train_state, model, tx, info.image_shape,
      use_loss_scaling=config.half_precision and config.half_precision_dtype == "float16")
  meta = {"model": config.model, "widths": list(model.widths), "dataset": config.dataset,
          "num_classes": num_classes, "image_shape": list(info.image_shape),
          "config": config.to_dict()}
  default_widths = list(MODEL_SPECS[config.model]["widths"])

  def check_meta(saved):
    saved_widths = saved.get("widths", default_widths)  # checkpoints before config.widths
    if (saved.get("model"), saved_widths, saved.get("dataset"), saved.get("num_classes")) != (
        meta["model"], meta["widths"], meta["dataset"], meta["num_classes"]):
      raise CheckpointError(
          f"{workdir} holds checkpoints of {saved.get('model')} (widths {saved_widths}) on "
          f"{saved.get('dataset')} ({saved.get('num_classes')} classes), but this config "
          f"trains {meta['model']} (widths {meta['widths']}) on {meta['dataset']} "
          f"({num_classes} classes); use another --workdir")

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  abstract = jax.eval_shape(make_state, jax.random.key(config.seed))
  replicated = parallel.replicated_sharding()
  # Checkpoints hold the unrolled layout whatever config.scan_blocks is (models.py).
  if model.scan_blocks:
    saved_layout, model_layout = to_unrolled_layout, to_scanned_layout
  else:
    saved_layout = model_layout = lambda tree: tree
  abstract = jax.eval_shape(saved_layout, abstract)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract)
  restored = checkpointer.restore_latest(abstract, check_meta)
  if restored is None:
    state = jax.jit(make_state, out_shardings=replicated)(jax.random.key(config.seed))
  else:
    state = model_layout(restored[0])
  start_step = int(jax.device_get(state.step))
  state = parallel.put_state(state)

  reporter = Reporter(workdir, num_train_steps, config.batch_size, start_step)
  reporter.say(f"{config.model} on {config.dataset}: {num_train_steps} steps of "
               f"{config.batch_size} images over {parallel.num_devices} devices "
               f"({parallel.mode}); " + (f"resuming at step {start_step}" if start_step
                                         else "starting afresh"))

  p_train = parallel.map_step(functools.partial(
      train_step, model=model, tx=tx, learning_rate_fn=learning_rate_fn,
      num_classes=num_classes, label_smoothing=config.label_smoothing))
  p_eval = parallel.map_eval(functools.partial(eval_step, model=model, num_classes=num_classes))

  def evaluate(state) -> dict[str, float]:
    sums = None
    for batch in input_pipeline.create_eval_iterator(config):
      out = p_eval(state, parallel.put_batch(batch))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = parallel.get_metrics(sums)
    count = max(float(sums["count"]), 1.0)
    return {"eval_loss": float(sums["loss"]) / count,
            "eval_accuracy": float(sums["top1"]) / count,
            "eval_top5_accuracy": float(sums["top5"]) / count,
            "eval_examples": int(sums["count"])}

  pending: list[tuple[int, Any]] = []   # device metrics of steps not yet looked at

  def flush() -> dict[str, float] | None:
    """Fetches pending metrics; raises TrainingDiverged at the first non-finite loss."""
    if not pending:
      return None
    host = [(s, parallel.get_metrics(m)) for s, m in pending]
    pending.clear()
    for s, m in host:
      if not np.isfinite(m["train_loss"]):
        raise TrainingDiverged(
            f"the training loss became {float(m['train_loss'])} at step {s}; stopped. The "
            f"newest checkpoint in {checkpointer.directory} was written before it and is "
            "intact. Lower config.learning_rate or enable warm-up, then run again.")
    mean = {k: float(np.mean([m[k] for _, m in host])) for k in host[-1][1]}
    mean["learning_rate"] = float(host[-1][1]["learning_rate"])
    return mean

  def save(step: int, state) -> None:
    flush()  # never checkpoint a diverged state
    checkpointer.save(step, saved_layout(parallel.get_state(state)), meta)

  def say_eval(step: int, metrics: dict[str, float]) -> None:
    reporter.say(f"step {step}: eval accuracy {metrics['eval_accuracy']:.4f}, top-5 "
                 f"{metrics['eval_top5_accuracy']:.4f}, loss {metrics['eval_loss']:.4f}")

  final: dict[str, Any] = {}
  step = start_step
  try:
    if start_step >= num_train_steps:
      # A finished run: evaluate its last checkpoint (with this config's eval settings), so a
      # notebook gets the final metrics back; metrics.jsonl already holds the run's own.
      reporter.say(f"already trained to step {start_step} of {num_train_steps}; evaluating it")
      final = evaluate(state)
      say_eval(step, final)
    else:  # only a run with steps left loads the training split
      train_iter = input_pipeline.create_train_iterator(config, start_step=start_step)
    with _Preemption() as preemption:
      while step < num_train_steps:
        batch = next(train_iter)
        state, metrics = p_train(state, parallel.put_batch(batch))
        step += 1
        pending.append((step, metrics))
        if step == start_step + 1:
          reporter.restart_clock(step)  # the first step's time is mostly compilation
        if step % config.log_every_steps == 0 or step == num_train_steps:
          summary = flush()
          reporter.progress(step, summary)
          reporter.write(step, summary)
        if step % eval_every == 0 or step == num_train_steps:
          flush()
          final = evaluate(state)
          reporter.write(step, final)
          say_eval(step, final)
          reporter.restart_clock(step)
        if step % checkpoint_every == 0 or step == num_train_steps:
          save(step, state)
        if preemption.requested:
          reporter.say(f"SIGTERM: saving a checkpoint at step {step} and stopping")
          if step not in checkpointer.all_steps():
            save(step, state)
          break
  finally:
    checkpointer.wait()
    checkpointer.close()
    reporter.close()

  if step >= num_train_steps and config.plot and jax.process_index() == 0:
    from flax_resnet.plotting import plot_runs
    plot_runs([workdir], os.path.join(workdir, "curves.png"), [config.model])
  return {**final, "steps": step}
