"""One run per workdir (flax_resnet/workdir_lock.py): a held workdir is refused, a dead
holder leaves nothing stuck, a gs:// lease is renewed, refused while fresh, taken over stale."""

import json
import subprocess
import sys
import time

import pytest

from flax_resnet import workdir_lock
from flax_resnet.errors import CheckpointError
from train_utils import ROOT


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    with pytest.raises(CheckpointError, match=r"is in use by another run \(pid \d+ on "):
      with workdir_lock.hold(str(tmp_path)):
        pass
  with workdir_lock.hold(str(tmp_path)):  # released at the end of the first
    pass


def test_a_killed_holder_leaves_nothing_stuck(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from flax_resnet import workdir_lock\n"
       f"with workdir_lock.hold({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(600)"],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(CheckpointError, match=f"pid {holder.pid} "):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  with workdir_lock.hold(str(tmp_path)):  # the OS released the dead process's lock
    pass


def test_a_lease_is_refused_while_fresh_and_taken_over_when_stale(tmp_path, monkeypatch):
  path = tmp_path / ".lease"
  other = {"host": "elsewhere", "pid": 1, "time": time.time() - 30}
  path.write_text(json.dumps(other))
  with pytest.raises(CheckpointError, match="pid 1 on elsewhere, renewed 30 s ago"):
    workdir_lock.Lease(path)
  assert json.loads(path.read_text()) == other  # left as it was
  other["time"] = time.time() - workdir_lock.STALE_S - 1  # its run died long ago
  path.write_text(json.dumps(other))
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
  lease = workdir_lock.Lease(path)
  first = json.loads(path.read_text())
  assert first["host"] != "elsewhere" or first["pid"] != 1
  time.sleep(0.3)
  assert json.loads(path.read_text())["time"] > first["time"]  # renewed
  lease.close()
  assert not path.exists()


def test_a_lease_of_an_ended_process_on_this_machine_is_taken_over_at_once(tmp_path):
  import socket
  ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True).stdout.strip()
  path = tmp_path / ".lease"
  path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(ended),
                              "time": time.time()}))
  workdir_lock.Lease(path).close()  # a SIGKILLed run started again on the same machine
