"""Data parallelism over every device of every host.

The per-device steps of `flax_resnet.step` are mapped over a 1-D device mesh with
`jax.shard_map` (the default; jit-compiled, what current JAX builds `jax.pmap` on too),
or with `jax.pmap` when `config.parallelism='pmap'`. Both run the same step function, so both
give the same numbers. The train state lives replicated on every device; each host feeds its
own slice of the global batch.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flax_resnet.errors import ConfigError

AXIS = "data"  # the mesh axis of data parallelism, named by every collective of the steps
MODES = ("shard_map", "pmap")


def split_evenly(total: int, parts: int, field: str, over: str) -> int:
  """total // parts: the share of each device, host or micro-batch of a batch
  (config.`field`), or a ConfigError, the one message of this rule, if it does not split
  into `parts` equal non-empty shares (`over` names the parts)."""
  if total <= 0 or total % parts:
    suggestion = max(total // parts * parts, parts)
    raise ConfigError(f"config.{field}={total} does not divide over {over}; use a multiple of "
                      f"{parts}, e.g. --config.{field}={suggestion}")
  return total // parts


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins the hosts of a multi-host job into one JAX runtime.

  Explicit arguments win; otherwise JAX's own cluster detection (Cloud TPU pods, SLURM,
  Open MPI, ...) is tried only where such a cluster announces itself, so a laptop run is
  untouched.
  """
  # CPU devices of several processes talk through gloo (GPU and TPU ignore this setting).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address or (num_processes or 1) > 1:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _in_cluster():
    jax.distributed.initialize()


def _in_cluster() -> bool:
  return (len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
          or int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)


class DataParallel:
  """Maps per-device steps over all devices; moves states and batches to and from them."""

  def __init__(self, mode: str = "shard_map", devices=None):
    if mode not in MODES:
      raise ValueError(f"unknown parallelism {mode!r}; use one of {MODES}")
    self.mode = mode
    self.devices = list(devices if devices is not None else jax.devices())
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def check_batch_size(self, global_batch_size: int, field: str = "batch_size",
                       micro_batches: int = 1) -> None:
    """A batch must split evenly over the devices (and each device's share into
    `micro_batches`): say so before anything compiles."""
    over = f"the {self.num_devices} devices of this run"
    if micro_batches > 1:
      over += f", {micro_batches} micro-batches each (config.grad_accum_steps)"
    split_evenly(global_batch_size, self.num_devices * micro_batches, field, over)

  # --- compiled steps ---------------------------------------------------------------------

  def map_step(self, per_device_step: Callable, donate_state: bool = True) -> Callable:
    """`per_device_step(state, batch) -> (state, metrics)` as a step over all devices."""
    donate = (0,) if donate_state else ()
    if self.mode == "pmap":
      return jax.pmap(per_device_step, axis_name=AXIS, devices=self.devices,
                      donate_argnums=donate)
    return jax.jit(self._shard_map(per_device_step), donate_argnums=donate)

  def map_eval(self, per_device_eval: Callable) -> Callable:
    """`per_device_eval(state, batch) -> sums` (psum'ed) as a step over all devices."""
    if self.mode == "pmap":
      return jax.pmap(per_device_eval, axis_name=AXIS, devices=self.devices)
    return jax.jit(self._shard_map(per_device_eval))

  def _shard_map(self, per_device_fn: Callable) -> Callable:
    # check_vma=False gives pmap's semantics, which the steps are written for: the gradient
    # of a replicated parameter is this device's own, averaged by an explicit pmean. (With
    # varying-manual-axes checking, shard_map would already sum it over devices.) Every
    # output is made identical on all devices by a collective, hence out_specs=P().
    return jax.shard_map(per_device_fn, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                         out_specs=P(), check_vma=False)

  # --- placement --------------------------------------------------------------------------

  def replicated_sharding(self):
    return NamedSharding(self.mesh, P())

  def put_state(self, state):
    """A host-independent state (as restored or initialized) onto every device."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      stacked = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)), P(AXIS))
      one_copy = lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
      return jax.device_put(
          jax.tree.map(lambda x: np.broadcast_to(one_copy(x), (n, *np.shape(x))), state),
          stacked)
    # Copy first: device_put may alias the caller's buffers, which a donating step deletes.
    return jax.device_put(jax.tree.map(jnp.copy, state), self.replicated_sharding())

  def get_state(self, state):
    """The state as one copy, independent of the device count (what checkpoints hold)."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: x[0], state)
    return state

  def put_batch(self, host_batch: dict):
    """This host's slice of the global batch onto its devices."""
    if self.mode == "pmap":
      n = len(self.local_devices)
      return jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n, *x.shape[1:])), host_batch)
    sharding = NamedSharding(self.mesh, P(AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                        host_batch)

  def get_metrics(self, metrics):
    """Device metrics (identical on every device) as host numpy values."""
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), metrics)

