"""One run per workdir: `hold(workdir)` keeps other runs out of it while a run trains.

Two runs on one workdir would save into the same checkpoints folder (each clearing the
other's temporary folders) and write every step to metrics.jsonl twice.

Local workdirs: the run holds an exclusive `flock` on WORKDIR/.lock, which the operating
system releases when the process ends in any way (a crash, SIGKILL, a power cut of the
machine), so a dead run never leaves the workdir locked; the file itself stays and records
who held it last (host, pid), for the message. flock works on local disks and on NFSv4; on
other network filesystems it may lock only within one machine.

Object stores (gs://) have no locks. There the run keeps a lease: WORKDIR/.lease holds its
host, pid and a time it renews every HEARTBEAT_S from a background thread. Another run
refuses a lease renewed within STALE_S and takes over an older one (a crashed run's), or
one whose process, on this same machine, has ended (a run killed and started again). The
limits: two runs that start within a few seconds of each other can both take a stale or
missing lease (gs:// gives this code no compare-and-swap; the run reads its lease back
after writing it, which narrows that window to the seconds between the two), and a run
whose host stops for longer than STALE_S (a suspended VM) can lose its lease to another.
A run killed on gs:// keeps the workdir from runs on other machines for up to STALE_S.

On a pod, process 0 takes the lock for the run and tells the other processes whether it
got it, so that all of them stop together when it did not.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import jax
import numpy as np

from flax_resnet import fs
from flax_resnet.errors import CheckpointError

HEARTBEAT_S = 60.0
STALE_S = 600.0


def _holder() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def _dead(holder: dict) -> bool:
  """Whether the holder was a process of this machine that has ended."""
  if holder.get("host") != socket.gethostname():
    return False
  try:
    os.kill(int(holder.get("pid", 0)), 0)
  except ProcessLookupError:
    return True
  except (OSError, ValueError):  # alive under another user, or no pid
    return False
  return False


def _in_use(workdir: str, holder: dict | None, how: str) -> CheckpointError:
  who = (f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process")
  return CheckpointError(f"{workdir} is in use by another run ({who}{how}); wait for it to "
                         "end, or choose another --workdir")


class FileLock:
  """An exclusive flock on a local file; released by close() or by the process's end."""

  def __init__(self, path: str):
    import fcntl  # POSIX only: the one place that needs it
    self._fcntl = fcntl
    self.path = path
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = self._read()
      os.close(self._fd)
      raise _in_use(os.path.dirname(path), holder, "") from None
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(_holder()).encode(), 0)

  def _read(self) -> dict | None:
    try:
      return json.loads(os.pread(self._fd, 4096, 0) or b"null")
    except ValueError:
      return None

  def close(self) -> None:
    self._fcntl.flock(self._fd, self._fcntl.LOCK_UN)
    os.close(self._fd)


class Lease:
  """A lease object renewed by a daemon thread (object stores, which have no locks)."""

  def __init__(self, path, now=time.time):
    self.path = fs.user_path(path)
    self._now = now
    self._me = _holder()
    held = self._read()
    if held and not _dead(held) and now() - held.get("time", 0) < STALE_S:
      age = now() - held["time"]
      raise _in_use(str(self.path.parent), held, f", renewed {age:.0f} s ago; a lease "
                    f"older than {STALE_S:.0f} s is taken over")
    self._write()
    if self._read() != self._me:  # another run wrote between our read and write
      raise _in_use(str(self.path.parent), self._read(), "")
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._renew, name="workdir_lease", daemon=True)
    self._thread.start()

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, ValueError):
      return None
    except Exception:  # noqa: BLE001 - a storage client's not-found (TensorFlow's OpError)
      return None

  def _write(self) -> None:
    self._me["time"] = self._now()
    self.path.write_text(json.dumps(self._me))

  def _renew(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      with contextlib.suppress(Exception):  # a missed renewal: the next one tries again
        self._write()

  def close(self) -> None:
    self._stop.set()
    self._thread.join()
    with contextlib.suppress(Exception):
      if self._read() == self._me:
        self.path.unlink()


def _agree(got_it: bool) -> bool:
  """Process 0's answer, on every process of a pod."""
  if jax.process_count() == 1:
    return got_it
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(got_it)))


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir for one run: a CheckpointError at once where another run holds it."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = (Lease(fs.user_path(workdir) / ".lease") if fs.is_remote(workdir)
              else FileLock(str(fs.user_path(workdir) / ".lock")))
    except CheckpointError as e:
      error = e
  if not _agree(error is None):
    raise error or CheckpointError(f"{workdir} is in use by another run (process 0 of this "
                                   "run found it held); choose another --workdir")
  try:
    yield
  finally:
    if lock is not None:
      lock.close()
