"""Every CPU-specific choice of the library, in one place.

Two kinds of choice live here, both leaving the numbers a run computes unchanged:
- XLA:CPU settings, made through XLA_FLAGS before JAX starts its backend (`configure_cpu`):
  one virtual device per core, so the data-parallel step runs one program per core (XLA:CPU
  keeps about one core busy per device); the convolution library, Eigen unless asked
  otherwise (exact in float32 on every CPU, where XLA's default, YNNPACK, was not on one
  with AMX); and glibc's malloc told to keep freed memory, since
  XLA:CPU allocates every execution's buffers anew and glibc would unmap and fault them in
  again each step.
- Module overrides (`model_overrides`): formulations of the model's operations that XLA:CPU
  runs faster (flax_resnet.cpu_ops), passed to `create_model` by the training loop and the
  benchmarks. The model itself has no backend checks.

benchmarks/README.md holds the measurements behind each choice. XLA reads the flags once,
when JAX creates its CPU backend (at the first `jax.devices()` or computation), so
`configure_cpu()` must run before that; importing jax is fine.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from importlib import metadata, util

from flax_resnet.errors import ConfigError

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# XLA's default library fusions less YNNPACK's convolutions: those then run on Eigen.
_EIGEN_CONVOLUTIONS = f"{_YNN_FUSION_FLAG}=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
CONVOLUTION_LIBRARIES = ("eigen", "ynnpack")
# Eigen computes float32 convolutions in float32 on every CPU. YNNPACK, XLA's own default, is
# faster on some AVX-512 CPUs, but on a CPU with AMX a resnet18 step on it was measured 400x
# further from its float64 value than PyTorch's float32 step (benchmarks/README.md, "Which
# convolution library?"). Exactness first: Eigen unless asked otherwise.
DEFAULT_CONVOLUTION_LIBRARY = "eigen"
# Picks the library for train.py and the benchmarks, e.g. FLAX_RESNET_CONVOLUTIONS=ynnpack.
CONVOLUTIONS_ENV = "FLAX_RESNET_CONVOLUTIONS"


def default_cpu_device_count() -> int:
  """One virtual device per core this process may run on (at least 1): more devices than
  cores only add synchronization (benchmarks/README.md)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, cores)


def resolve_convolution_library(library: str | None = None) -> str:
  """`library` if given, else FLAX_RESNET_CONVOLUTIONS if set, else
  DEFAULT_CONVOLUTION_LIBRARY; checked against CONVOLUTION_LIBRARIES."""
  chosen = library or os.environ.get(CONVOLUTIONS_ENV) or DEFAULT_CONVOLUTION_LIBRARY
  if chosen not in CONVOLUTION_LIBRARIES:
    source = "asked for" if library else f"in {CONVOLUTIONS_ENV}"
    raise ConfigError(f"unknown convolution library {chosen!r} {source}; use one of "
                     f"{', '.join(CONVOLUTION_LIBRARIES)}")
  return chosen


def _backends_started() -> bool:
  """Whether JAX has started its backends (after which XLA_FLAGS no longer take effect). JAX
  has no public API for this: the one private call is here, and tests/test_cpu.py fails if
  it stops answering."""
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

  XLA:CPU allocates each execution's temporary buffers anew and frees them at its end; glibc
  serves blocks that large with mmap and returns them with munmap, so every step would fault
  all those pages in again. With one malloc arena, no mmap and no trimming, the freed blocks
  stay in the heap and the next step reuses them. The price: the process keeps its peak heap
  until it exits. Call it before JAX starts its backends (the
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
  convolutions with `convolution_library` ('eigen' or 'ynnpack'; default: the environment
  variable FLAX_RESNET_CONVOLUTIONS, else DEFAULT_CONVOLUTION_LIBRARY).

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


def model_overrides(in_loops: bool = False, backend: str | None = None) -> dict:
  """ResNet field overrides that make XLA:CPU train faster, for `create_model(name, **...)`.

  On the CPU: every ReLU output is materialized once (`cpu_ops.materialized_relu`);
  convolutions whose output map is smaller than their window (3x3 on 2x2 or 1x1 maps, the
  last stages of ImageNet-style nets on small images) are one matrix product
  (`cpu_ops.small_map_conv`); the stem's max-pool has an elementwise gradient
  (`cpu_ops.max_pool`); and with `in_loops`, for a model whose convolutions run inside a
  loop (scanned blocks, or the micro-batch loop of gradient accumulation), every other
  convolution's backward pass is written in the canonical layout that XLA:CPU runs on its
  fast kernels inside loops too (`cpu_ops.canonical_conv`). Elsewhere (`backend`, default
  `jax.default_backend()`, is not 'cpu'): no overrides. They change neither the variables
  nor the numbers (to float32 rounding), only the operations XLA:CPU runs.
  """
  import jax

  if (backend or jax.default_backend()) != "cpu":
    return {}
  import functools

  import flax.linen as nn

  from flax_resnet import cpu_ops
  conv = cpu_ops.small_map_conv
  if in_loops:
    conv = functools.partial(cpu_ops.small_map_conv, other=cpu_ops.canonical_conv)
  return {"act": cpu_ops.materialized_relu, "pool": cpu_ops.max_pool,
          "conv": functools.partial(nn.Conv, conv_general_dilated=conv)}
