"""The training loop: `train_and_evaluate(config, workdir)`, importable from a notebook.

    config = flax_resnet.default_config()
    config.update(model="cifar_resnet20", dataset="fashion_mnist", image_size=28, ...)
    result = flax_resnet.train_and_evaluate(config, "workdirs/mine")

In order: check the config and the data (before anything is written), build the model,
optimizer and data-parallel steps, restore the newest checkpoint of WORKDIR/checkpoints or
initialize, then train, evaluating and checkpointing as configured, and write metrics,
TensorBoard summaries and a plot. Each part is a function or class of its own below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet import cpu, fs, init_from, optim, scan_layout, workdir_lock
from flax_resnet.checkpointing import Checkpointer
from flax_resnet.config import model_fields
from flax_resnet.errors import ConfigError, TrainingDiverged
from flax_resnet.named_models import create_model
from flax_resnet.parallel import AXIS, DataParallel
from flax_resnet.plan import RunPlan, plan_run
from flax_resnet.reporting import Reporter
from flax_resnet.resume import check_same_run, run_identity
from flax_resnet.step import StepSettings, create_train_state, eval_step, train_step, with_ema
from flax_resnet.workdir import record_classes


def compute_dtype(config):
  if not config.half_precision:
    return jnp.float32
  return jnp.float16 if config.half_precision_dtype == "float16" else jnp.bfloat16


def build_model(config, num_classes: int):
  """The configured network, with synchronized BatchNorm over the data axis and the speed
  overrides of the backend (flax_resnet.cpu.model_overrides; none on GPU and TPU)."""
  return create_model(config.model, num_classes=num_classes, **model_fields(config),
                      dtype=compute_dtype(config), axis_name=AXIS,
                      **cpu.model_overrides(in_loops=config.scan_blocks or
                                            config.grad_accum_steps > 1))


def prepare_workdir(workdir: str) -> str:
  """The workdir (absolute if local; gs://... as given), created; a ConfigError if it cannot
  be written to (no such bucket, no permission, a file in the way)."""
  path = fs.user_path(workdir)
  fs.check_bucket(workdir, "--workdir", ConfigError)
  problem = fs.write_problem(path, f".write_test-{jax.process_index()}")
  if problem:
    raise ConfigError(f"cannot write to workdir {path} ({problem}); choose a folder "
                      "you can write to with --workdir")
  return str(path)


class Preemption:
  """Turns SIGTERM (a preempted VM, a cluster scheduler) and the first SIGINT (Ctrl-C, a
  notebook's interrupt) into a request to save and stop; `requested` names the signal. A
  second Ctrl-C interrupts at once, as Python does."""

  SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread (e.g. some notebook kernels): no handler
        pass
    return self

  def _handle(self, signum, frame):
    self.requested = self.requested or self.SIGNALS[signum]
    if signum == signal.SIGINT:
      signal.signal(signum, self._previous[signum])

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


# --- Checkpoints: what they hold, and restoring or initializing the state ---------------------

def checkpoint_layout(model) -> tuple[Callable, Callable]:
  """(to_checkpoint, from_checkpoint): checkpoints hold the unrolled variable layout whatever
  `scan_blocks` is, so a model with scanned blocks converts on the way out and in."""
  if model.scan_blocks:
    return scan_layout.to_unrolled_layout, scan_layout.to_scanned_layout
  identity = lambda tree: tree
  return identity, identity


def saved_with_ema(meta: dict[str, Any]) -> bool:
  """Whether the run that wrote a checkpoint kept an EMA of the weights (a `meta` without
  config.ema_decay: no)."""
  return meta.get("config", {}).get("ema_decay", 0.0) > 0


def restore_or_initialize(checkpointer: Checkpointer, make_state: Callable, seed: int,
                          to_checkpoint: Callable, from_checkpoint: Callable,
                          parallel: DataParallel, check_meta: Callable, ema: bool = False,
                          start: dict | None = None):
  """The state of the newest readable checkpoint, or a fresh one from `seed` (and the
  pretrained variables `start`, see init_from.py), on the devices.

  A checkpoint is restored in the structure its run saved; then an EMA is started at the
  restored weights where `ema` is newly on, or dropped where it is now off.
  Returns (state, start_step)."""
  replicated = parallel.replicated_sharding()
  abstract = jax.eval_shape(make_state, jax.random.key(seed))
  no_ema = abstract.replace(ema_params=None, ema_batch_stats=None)
  abstracts = {False: no_ema, True: jax.eval_shape(with_ema, no_ema)}
  abstracts = {k: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(to_checkpoint, v)) for k, v in abstracts.items()}
  restored = checkpointer.restore_latest(lambda meta: abstracts[saved_with_ema(meta)],
                                         check_meta)
  if restored is None:
    state = jax.jit(make_state, out_shardings=replicated)(jax.random.key(seed), start=start)
  else:
    state = from_checkpoint(restored[0])
    if ema and state.ema_params is None:
      state = with_ema(state)
    elif not ema:
      state = state.replace(ema_params=None, ema_batch_stats=None)
  start_step = int(jax.device_get(state.step))
  return parallel.put_state(state), start_step


# --- Evaluation and training metrics ---------------------------------------------------------

def evaluate(p_eval: Callable, state, batches, parallel: DataParallel) -> dict[str, float]:
  """Loss, top-1 and top-5 accuracy over every example of `batches` (padding masked out);
  where the state holds an EMA, the EMA weights' too (ema_eval_loss, ...), from the same
  pass over the data."""
  sums = None
  for batch in batches:
    out = p_eval(state, parallel.put_batch(batch))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = parallel.get_metrics(sums)
  count = max(float(sums["count"]), 1.0)
  result = {}
  for prefix in ("", "ema_") if "ema_loss" in sums else ("",):
    result.update({f"{prefix}eval_loss": float(sums[prefix + "loss"]) / count,
                   f"{prefix}eval_accuracy": float(sums[prefix + "top1"]) / count,
                   f"{prefix}eval_top5_accuracy": float(sums[prefix + "top5"]) / count})
  return {**result, "eval_examples": int(sums["count"])}


class MetricsBuffer:
  """Training metrics of the steps not yet looked at, kept on the devices so that the host
  does not wait for each step. `flush` fetches them and writes their mean (the learning rate:
  the last step's) as one record at the last of them, whoever asks for it (a log line, an
  evaluation, a checkpoint), so that every step counts in exactly one record. At the first
  non-finite loss it writes the steps before it and raises TrainingDiverged."""

  def __init__(self, get_metrics: Callable, write: Callable[[int, dict], None], checkpointer):
    self._get = get_metrics
    self._write = write
    self._checkpointer = checkpointer  # what the divergence message says is kept
    self._pending: list[tuple[int, Any]] = []

  def add(self, step: int, metrics) -> None:
    self._pending.append((step, metrics))

  def flush(self) -> dict[str, float] | None:
    if not self._pending:
      return None
    host = [(s, self._get(m)) for s, m in self._pending]
    self._pending.clear()
    bad = next((i for i, (_, m) in enumerate(host) if not np.isfinite(m["train_loss"])), None)
    good = host if bad is None else host[:bad]
    mean = None
    if good:
      mean = {k: float(np.mean([m[k] for _, m in good])) for k in good[-1][1]}
      mean["learning_rate"] = float(good[-1][1]["learning_rate"])
      self._write(good[-1][0], mean)
    if bad is not None:
      step, m = host[bad]
      raise TrainingDiverged(
          f"the training loss became {float(m['train_loss'])} at step {step}; stopped. "
          f"{self._kept()} Lower config.learning_rate or enable warm-up, then run again.")
    return mean

  def _kept(self) -> str:
    steps = self._checkpointer.all_steps()
    if not steps:
      return (f"No checkpoint was written before it ({self._checkpointer.directory} holds "
              "none), so the next run starts afresh.")
    return (f"The newest checkpoint, step {steps[-1]} in {self._checkpointer.directory}, was "
            "written before it and is intact.")


# --- The loop -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Training:
  """What the loop trains with, built from the config and the plan (`build`)."""
  settings: StepSettings
  make_state: Callable       # rng -> a fresh TrainState
  meta: dict[str, Any]       # the run's identity, saved with every checkpoint
  to_checkpoint: Callable    # checkpoint_layout(model)
  from_checkpoint: Callable
  p_train: Callable          # the train step mapped over the devices
  p_eval: Callable           # the eval step mapped over the devices


def build(config, plan: RunPlan) -> Training:
  """The model, optimizer, step settings and mapped steps of `config`."""
  learning_rate_fn = optim.create_learning_rate_fn(config, plan.steps_per_epoch,
                                                   plan.num_train_steps)
  tx = optim.create_optimizer(config, learning_rate_fn)
  model = build_model(config, plan.num_classes)
  settings = StepSettings.from_config(config, model, tx, learning_rate_fn, plan.num_classes)
  make_state = functools.partial(
      create_train_state, model, tx, plan.info.image_shape,
      use_loss_scaling=config.half_precision and config.half_precision_dtype == "float16",
      ema=settings.ema_decay > 0)
  return Training(
      settings=settings, make_state=make_state,
      meta=run_identity(config, model, plan.num_classes, plan.info.image_shape),
      to_checkpoint=checkpoint_layout(model)[0], from_checkpoint=checkpoint_layout(model)[1],
      p_train=plan.parallel.map_step(functools.partial(train_step, settings=settings)),
      p_eval=plan.parallel.map_eval(functools.partial(eval_step, settings=settings)))


def train(config, plan: RunPlan, training: Training, state, start_step: int,
          checkpointer: Checkpointer, reporter: Reporter) -> tuple[dict[str, Any], int, str | None]:
  """Trains from `start_step` to plan.num_train_steps, logging, evaluating and checkpointing
  as configured, until the end or a SIGTERM or Ctrl-C (which save and stop). A checkpoint is
  saved before the evaluation of the same step, and an evaluation that fails saves its step
  first. A finished run is evaluated once. Returns (the last evaluation, the step reached,
  'SIGTERM', 'SIGINT' or None)."""
  from flax_resnet.data import pipeline  # imports TensorFlow: only when training

  parallel, num_train_steps = plan.parallel, plan.num_train_steps
  metrics = MetricsBuffer(parallel.get_metrics, reporter.write, checkpointer)

  def run_evaluation(step: int) -> dict[str, Any]:
    batches = pipeline.create_eval_iterator(config, info=plan.info)
    result = evaluate(training.p_eval, state, batches, parallel)
    line = (f"step {step}: eval accuracy {result['eval_accuracy']:.4f}, top-5 "
            f"{result['eval_top5_accuracy']:.4f}, loss {result['eval_loss']:.4f}")
    if "ema_eval_accuracy" in result:
      line += (f"; EMA accuracy {result['ema_eval_accuracy']:.4f}, top-5 "
               f"{result['ema_eval_top5_accuracy']:.4f}, loss {result['ema_eval_loss']:.4f}")
    reporter.say(line)
    return {**result, "eval_step": step}

  def save(step: int) -> None:
    metrics.flush()  # written, and never checkpoint a diverged state
    checkpointer.save(step, training.to_checkpoint(parallel.get_state(state)), training.meta)

  if start_step >= num_train_steps:
    # A finished run: evaluate its last checkpoint (with this config's eval settings), so a
    # notebook gets the final metrics back; metrics.jsonl already holds the run's own.
    reporter.say(f"already trained to step {start_step} of {num_train_steps}; evaluating it")
    return run_evaluation(start_step), start_step, None

  last_eval: dict[str, Any] = {}
  train_iter = pipeline.create_train_iterator(config, start_step=start_step, info=plan.info)
  step = start_step
  with Preemption() as preemption:
    while step < num_train_steps:
      state, step_metrics = training.p_train(state, parallel.put_batch(next(train_iter)))
      step += 1
      metrics.add(step, step_metrics)
      last = step == num_train_steps
      if step == start_step + 1:
        reporter.restart_clock(step)  # the first step's time is mostly compilation
      if step % config.log_every_steps == 0 or last:
        summary = metrics.flush()
        if summary is not None:
          reporter.progress(step, summary)
      if step % plan.checkpoint_every == 0 or last:
        save(step)  # before the evaluation, which then cannot lose the training before it
      if step % plan.eval_every == 0 or last:
        metrics.flush()  # the steps since the last log line, written at this step
        try:
          last_eval = run_evaluation(step)
        except BaseException:  # a bad eval image, Ctrl-C twice: keep this step's training
          if step not in checkpointer.all_steps():
            save(step)
          raise
        reporter.write(step, {k: v for k, v in last_eval.items() if k != "eval_step"})
        reporter.restart_clock(step)
      if preemption.requested and not last:
        reporter.say(f"{preemption.requested}: saving a checkpoint at step {step} and stopping")
        if step not in checkpointer.all_steps():
          save(step)
        return last_eval, step, preemption.requested
  return last_eval, step, None


def finish(config, workdir: str) -> None:
  """After the last step: the training curves as WORKDIR/curves.png (config.plot)."""
  if config.plot and jax.process_index() == 0:
    from flax_resnet.plotting import plot_runs
    plot_runs([workdir], str(fs.user_path(workdir) / "curves.png"), [config.model])


def train_and_evaluate(config, workdir: str, devices=None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming there if it holds checkpoints).

  Returns the last evaluation's metrics (eval_accuracy, eval_top5_accuracy, eval_loss,
  eval_examples; with config.ema_decay > 0 also the EMA weights' ema_eval_accuracy,
  ema_eval_top5_accuracy, ema_eval_loss) with `eval_step`, the step it was measured at, and
  `steps`, the step the run ended at; `stopped_by` is 'SIGTERM' or 'SIGINT' when that signal
  (Ctrl-C, a notebook's interrupt) ended it before `num_train_steps`, after saving.
  """
  if not str(workdir).strip():  # e.g. --workdir=$UNSET: never the current folder in silence
    raise ConfigError("--workdir is empty; name the folder the run writes to")
  plan = plan_run(config, devices)  # raises ConfigError/DataError before anything is written
  # config.init_from's weights, read and checked before anything is written (None: resuming)
  start = init_from.initial_weights(config, build_model(config, plan.num_classes),
                                    plan.info.image_shape, workdir)
  workdir = prepare_workdir(workdir)
  with contextlib.ExitStack() as stack:  # whatever happens, closed in the reverse order
    stack.enter_context(workdir_lock.hold(workdir))  # one run per workdir
    training = build(config, plan)
    checkpointer = Checkpointer(str(fs.user_path(workdir) / "checkpoints"),
                                config.keep_checkpoints)
    stack.callback(checkpointer.close)  # saves finished, or failed in one CheckpointError
    changes: list[str] = []  # config fields changed since the checkpoint resumed from

    training.meta["weights_from"] = start.source if start else (
        f"the model's own initialization (seed {config.seed})")

    def check_meta(saved):  # called for each checkpoint tried, newest first
      changes[:] = check_same_run(saved, training.meta, workdir)
      if "weights_from" in saved:  # a resumed run keeps the record of its start
        training.meta["weights_from"] = saved["weights_from"]

    state, start_step = restore_or_initialize(
        checkpointer, training.make_state, config.seed, training.to_checkpoint,
        training.from_checkpoint, plan.parallel, check_meta=check_meta,
        ema=training.settings.ema_decay > 0, start=start and start.variables)
    record_classes(workdir, config, plan.num_classes)  # WORKDIR/classes.json, for load()
    reporter = Reporter(workdir, plan.num_train_steps, config.batch_size, start_step)
    stack.callback(reporter.close)
    reporter.say(f"{config.model} on {config.dataset}: {plan.num_train_steps} steps of "
                 f"{config.batch_size} images over {plan.parallel.num_devices} devices "
                 f"({plan.parallel.mode}); " + (f"resuming at step {start_step}" if start_step
                                                else "starting afresh"))
    reporter.say(f"weights: {training.meta['weights_from']}")
    notes = list(plan.notes) + ([f"resuming with config changes: {', '.join(changes)}"]
                                if start_step and changes else [])
    if start_step and config.init_from:
      notes.append("config.init_from is not read: the run resumes from its own checkpoint")
    for note in notes:
      reporter.say(f"note: {note}")
    last_eval, step, stopped_by = train(config, plan, training, state, start_step,
                                        checkpointer, reporter)
    if step >= plan.num_train_steps:
      finish(config, workdir)
  return {**last_eval, "steps": step, "num_train_steps": plan.num_train_steps,
          "stopped_by": stopped_by}
