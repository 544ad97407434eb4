"""CPU defaults for training and benchmarks, set through XLA_FLAGS before JAX starts.

Why split a batch over virtual CPU devices: XLA:CPU runs most of a ResNet's convolutions one
after another, each on few threads, so one CPU device keeps about one core busy however many
there are (measured on 2 cores, cifar_resnet20 at batch 128: 68 images/s on one device, 184 on
two, 90 on four). `--xla_force_host_platform_device_count=N` makes N CPU devices; the data-parallel
step (flax_resnet.parallel) gives each its slice of the batch, and their programs run at the
same time, one per core. BatchNorm still sees the whole batch (synchronized over the mapped
axis), so the numbers are the same as on one device. See benchmarks/README.md for figures.

XLA reads the flags once, when JAX creates its CPU backend (at the first `jax.devices()` or
computation), so `configure_cpu()` must be called before that; importing jax is fine.
"""

from __future__ import annotations

import os
import re
import sys

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def default_cpu_device_count() -> int:
  """One virtual device per core this process may run on (at least 1).

  Measured on 2 cores (benchmarks/README.md): one device per core was the fastest setting;
  more devices than cores only adds synchronization.
  """
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, cores)


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


def configure_cpu(device_count: int | None = None) -> int:
  """Makes JAX's CPU backend expose `device_count` devices (default: one per core).

  Does nothing to GPU or TPU backends (the flag only concerns the host platform), and leaves
  an explicit `--xla_force_host_platform_device_count` already in XLA_FLAGS alone, so a user's
  setting wins. Returns the device count that the CPU backend will have.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  existing = re.search(re.escape(_DEVICE_COUNT_FLAG) + r"=(\d+)", flags)
  if existing:
    return int(existing.group(1))
  if _backends_started():
    raise RuntimeError(
        "configure_cpu() was called after JAX had started its backends, so XLA_FLAGS can no "
        "longer take effect; call it at the top of the program, before any jax.devices() or "
        "computation")
  count = int(device_count or default_cpu_device_count())
  if count < 1:
    raise ValueError(f"device_count must be at least 1, got {count}")
  os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_COUNT_FLAG}={count}".strip()
  return count
