"""CPU defaults for training and benchmarks, set through XLA_FLAGS before JAX starts.

Why split a batch over virtual CPU devices: XLA:CPU runs most of a ResNet's convolutions one
after another, each on few threads, so one CPU device keeps about one core busy however many
there are (measured on 2 cores, cifar_resnet20 at batch 128: 68 images/s on one device, 184 on
two, 90 on four). `--xla_force_host_platform_device_count=N` makes N CPU devices; the data-parallel
step (flax_resnet.parallel) gives each its slice of the batch, and their programs run at the
same time, one per core. BatchNorm still sees the whole batch (synchronized over the mapped
axis), so the numbers are the same as on one device. See benchmarks/README.md for figures.

Why freed host memory is kept (`reuse_freed_host_memory`): XLA:CPU allocates the temporary
buffers of every execution anew and frees them when it ends; glibc hands out and takes back
blocks that large with mmap/munmap, so each train step faulted all its pages in again.

Why convolutions go to Eigen on x86 CPUs without AVX-512 (`default_convolution_library`):
XLA:CPU hands every convolution with more than 16 channels to YNNPACK. On an AVX2-only CPU
(AMD EPYC, Zen 1) YNNPACK's forward and input-gradient convolutions ran as fast as Eigen's, but
its weight-gradient convolutions (a 32x32 window over the batch, 3x3 output) at 4-5 GFLOP/s
against Eigen's 35: the cifar_resnet20 step was 1.2-1.5x and the resnet50 step 3.3x faster with
every convolution on Eigen. On a CPU with AVX-512 YNNPACK was the faster library (1.12x on
cifar_resnet20), so it stays there, and on other architectures, which we have not measured.
Multi-process CPU runs (jax.distributed, gloo collectives) follow the same rule. Their first-step
gradients once looked library-dependent (3e-3 apart from a one-process run); the cause was a
ReLU: one BatchNorm output of the whole batch lay 3e-7 from zero (float64), and the rounding of
one run put it on the other side, changing one element of one device's gradient by 1e-4 and,
through the synchronized statistics, every device's. Two processes on either library agreed
with float64 to 2e-6; one process, on either library, differed only through that flip
(measured 2026-11-28). ReLU's kink makes such flips possible on any library or device count.

XLA reads the flags once, when JAX creates its CPU backend (at the first `jax.devices()` or
computation), so `configure_cpu()` must be called before that; importing jax is fine.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from importlib import metadata, util

from flax_resnet.errors import ConfigError

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# XLA's default library fusions less YNNPACK's convolutions: those then run on Eigen.
_EIGEN_CONVOLUTIONS = f"{_YNN_FUSION_FLAG}=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
CONVOLUTION_LIBRARIES = ("ynnpack", "eigen")
# Picks the library for train.py and the benchmarks, e.g. FLAX_RESNET_CONVOLUTIONS=ynnpack.
CONVOLUTIONS_ENV = "FLAX_RESNET_CONVOLUTIONS"


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


def _cpu_feature_flags() -> set[str] | None:
  """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.partition(":")[2].split())
  except OSError:
    pass
  return None


def default_convolution_library(machine: str | None = None,
                                cpu_flags: set[str] | None = None) -> str:
  """'eigen' on x86-64 CPUs without AVX-512, else 'ynnpack' (XLA's own choice).

  Measured (benchmarks/README.md): without AVX-512 YNNPACK's weight-gradient convolutions ran
  7x slower than Eigen's; with AVX-512 YNNPACK's whole step was the faster. The arguments
  default to this machine's (`platform.machine()`, /proc/cpuinfo).
  """
  machine = (machine or platform.machine()).lower()
  if machine not in ("x86_64", "amd64"):
    return "ynnpack"
  flags = _cpu_feature_flags() if cpu_flags is None else cpu_flags
  if flags is None:  # unknown CPU: leave XLA's choice
    return "ynnpack"
  return "ynnpack" if "avx512f" in flags else "eigen"


def resolve_convolution_library(library: str | None = None) -> str:
  """`library` if given, else FLAX_RESNET_CONVOLUTIONS if set, else
  `default_convolution_library()`; checked against CONVOLUTION_LIBRARIES."""
  chosen = library or os.environ.get(CONVOLUTIONS_ENV) or default_convolution_library()
  if chosen not in CONVOLUTION_LIBRARIES:
    source = "asked for" if library else f"in {CONVOLUTIONS_ENV}"
    raise ConfigError(f"unknown convolution library {chosen!r} {source}; use one of "
                     f"{', '.join(CONVOLUTION_LIBRARIES)}")
  return chosen


def _backends_started() -> bool:
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return False


# mallopt's options, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_freed_host_memory() -> bool:
  """Makes glibc's malloc keep freed memory for the next allocation instead of unmapping it.

  Why: XLA:CPU allocates each execution's temporary buffers anew (162 MB per device for
  cifar_resnet20 at batch 128) and frees them at its end. glibc serves blocks that large with
  mmap and returns them with munmap, so every step faulted all those pages in again: 83,000
  page faults and 0.16 s of kernel time per step on 2 cores, a fifth of the CPU time. With one
  malloc arena, no mmap and no trimming, the freed blocks stay in the heap and the next step
  reuses them: no page faults, and the step is 1.2x faster (benchmarks/README.md). The price:
  the process keeps its peak heap until it exits. Call it before JAX starts its backends (the
  device threads then share the one arena). Linux with glibc only; elsewhere it does nothing
  and returns False.
  """
  if not sys.platform.startswith("linux"):
    return False
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:  # not glibc
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  return all(mallopt(option, value) == 1 for option, value in settings)


def cpu_is_the_platform() -> bool:
  """Whether JAX will compute on the CPU: JAX_PLATFORMS says so, or no GPU/TPU plugin is
  installed. Answers without starting a backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return util.find_spec("libtpu") is None and not metadata.entry_points(group="jax_plugins")


def configure_cpu(device_count: int | None = None, reuse_host_memory: bool = True,
                  convolution_library: str | None = None) -> int:
  """Makes JAX's CPU backend expose `device_count` devices (default: one per core) and run its
  convolutions with `convolution_library` ('ynnpack' or 'eigen'; default: the environment
  variable FLAX_RESNET_CONVOLUTIONS, else `default_convolution_library()`).

  Does nothing to GPU or TPU backends (the flags only concern the host platform), and leaves
  a device count or YNNPACK fusion setting already in XLA_FLAGS alone, so a user's setting
  wins. Where JAX will compute on the CPU, also keeps freed host memory for reuse
  (`reuse_freed_host_memory`) unless `reuse_host_memory=False`. Returns the device count that
  the CPU backend will have.
  """
  library = resolve_convolution_library(convolution_library)
  on_cpu = cpu_is_the_platform()
  if reuse_host_memory and on_cpu and not _backends_started():
    reuse_freed_host_memory()
  flags = os.environ.get("XLA_FLAGS", "")
  added = []
  existing = re.search(re.escape(_DEVICE_COUNT_FLAG) + r"=(\d+)", flags)
  if existing:
    count = int(existing.group(1))
  else:
    count = int(device_count or default_cpu_device_count())
    if count < 1:
      raise ValueError(f"device_count must be at least 1, got {count}")
    added.append(f"{_DEVICE_COUNT_FLAG}={count}")
  if library == "eigen" and on_cpu and _YNN_FUSION_FLAG not in flags:
    added.append(_EIGEN_CONVOLUTIONS)
  if added:
    if _backends_started():
      raise RuntimeError(
          "configure_cpu() was called after JAX had started its backends, so XLA_FLAGS can no "
          "longer take effect; call it at the top of the program, before any jax.devices() or "
          "computation")
    os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()
  return count
