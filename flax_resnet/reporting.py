"""What a run tells the user: a progress line, WORKDIR/metrics.jsonl and TensorBoard summaries.

Only process 0 writes; the others stay quiet, so a pod run logs once.

metrics.jsonl holds one strict JSON object per line (a NaN or infinite value is written as
null). Locally each record is appended; an object store
(gs://) cannot append, so there the Reporter keeps the run's records in memory and rewrites
the whole object at each write (a GCS object is replaced whole, never seen half-written).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

import jax

from flax_resnet import fs


def _plain(value):
  """numpy/jax scalars as JSON numbers; NaN and infinities as null, which strict JSON parsers
  accept (they reject the NaN and Infinity that Python's json writes by default)."""
  if value is None or isinstance(value, (int, str)):
    return value
  try:
    value = float(value)
  except (TypeError, ValueError):
    return str(value)
  return value if math.isfinite(value) else None


class Reporter:
  """Writes metrics to metrics.jsonl (one JSON object per line, with `step`) and TensorBoard,
  and prints a progress line with step, loss, images/second and ETA."""

  def __init__(self, workdir: str, num_train_steps: int, global_batch_size: int,
               start_step: int = 0, tensorboard: bool = True, stream=None):
    self.active = jax.process_index() == 0
    self.num_train_steps = num_train_steps
    self.global_batch_size = global_batch_size
    self.stream = stream or sys.stdout
    self.path = fs.user_path(workdir) / "metrics.jsonl"
    self._rewrite = fs.is_remote(workdir)  # no appends on object stores
    self._records: list[dict[str, Any]] = []  # what the file holds, where it is rewritten
    self._mark = (start_step, time.perf_counter())
    self._writer = None
    if self.active:
      if start_step == 0 and self.path.exists():
        # a fresh run in an old workdir (on gs://: a copy, then a delete)
        self.path.rename(self.path.with_name("metrics.jsonl.old"))
      if tensorboard:
        from clu import metric_writers  # imports TensorFlow: only where it is used
        self._writer = metric_writers.create_default_writer(workdir, just_logging=False,
                                                            asynchronous=True)
    if start_step:
      self._drop_lines_after(start_step)

  def _drop_lines_after(self, step: int) -> None:
    """On resume, forget metrics of steps that the resumed run will train again."""
    if not (self.active and self.path.exists()):
      return
    self._records = [r for r in _parse(self.path.read_text()) if r.get("step", 0) <= step]
    text = "".join(_line(r) for r in self._records)
    if self._rewrite:
      self.path.write_text(text)
    else:  # locally: a complete new file replaces the old one in one rename
      tmp = self.path.with_name("metrics.jsonl.tmp")
      tmp.write_text(text)
      tmp.replace(self.path)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.active:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    if self._rewrite:
      self._records.append(record)
      self.path.write_text("".join(_line(r) for r in self._records))
    else:
      with self.path.open("a") as f:
        f.write(_line(record))
    if self._writer is not None:
      self._writer.write_scalars(int(step), {k: v for k, v in record.items()
                                             if k != "step" and isinstance(v, float)})

  def restart_clock(self, step: int) -> None:
    """Leaves time spent before now (compilation, evaluation) out of images/second."""
    self._mark = (step, time.perf_counter())

  def progress(self, step: int, metrics: dict[str, Any]) -> float:
    """Prints the progress line; returns images/second since the last call."""
    last_step, last_time = self._mark
    now = time.perf_counter()
    self._mark = (step, now)
    rate = (step - last_step) * self.global_batch_size / max(now - last_time, 1e-9)
    if self.active:
      speed = "compiling"
      if step > last_step:
        left = (self.num_train_steps - step) * self.global_batch_size / max(rate, 1e-9)
        speed = f"{rate:,.0f} img/s | ETA {_duration(left)}"
      print(f"step {step}/{self.num_train_steps} | loss {float(metrics['train_loss']):.4f} | "
            f"lr {float(metrics['learning_rate']):.4g} | {speed}", file=self.stream, flush=True)
    return rate

  def say(self, text: str) -> None:
    if self.active:
      print(text, file=self.stream, flush=True)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._writer.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _line(record: dict[str, Any]) -> str:
  """One strict JSON line; also for records read back from a file that held NaN."""
  return json.dumps({k: _plain(v) for k, v in record.items()}, allow_nan=False) + "\n"


def _parse(text: str) -> list[dict[str, Any]]:
  """The records of metrics.jsonl; a last line cut short (a crash or a full disk during its
  append) is left out: that record is lost, not the resume."""
  lines = [line for line in text.splitlines() if line.strip()]
  records = [json.loads(line) for line in lines[:-1]]
  if lines:
    try:
      records.append(json.loads(lines[-1]))
    except ValueError:
      pass
  return records


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of WORKDIR/metrics.jsonl (local or gs://), in order."""
  return _parse((fs.user_path(workdir) / "metrics.jsonl").read_text())
