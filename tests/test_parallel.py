"""Data parallelism (flax_resnet.parallel): the batch rule, multi-host start-up, and the same
numbers on 1 and 8 devices and under shard_map and pmap."""

import functools

import jax
import numpy as np
import pytest

from flax_resnet.errors import ConfigError
from flax_resnet.parallel import DataParallel, initialize_distributed, split_evenly
from step_utils import small_step_setup, train_on


def test_split_evenly_is_the_one_batch_rule():
  assert split_evenly(64, 8, "batch_size", "the 8 devices") == 8
  with pytest.raises(ConfigError, match=r"config.batch_size=100 does not divide over the 8 "
                                        r"devices; use a multiple of 8, e.g. --config.batch_size=96"):
    split_evenly(100, 8, "batch_size", "the 8 devices")
  with pytest.raises(ConfigError, match="e.g. --config.eval_batch_size=8"):
    split_evenly(4, 8, "eval_batch_size", "the 8 devices")
  parallel = DataParallel("shard_map", jax.devices())
  parallel.check_batch_size(64, "batch_size", micro_batches=2)
  with pytest.raises(ConfigError, match="8 devices of this run, 3 micro-batches each"):
    parallel.check_batch_size(128, "batch_size", micro_batches=3)


def test_initialize_distributed_joins_only_when_asked_or_in_a_cluster(monkeypatch):
  """A laptop run never starts jax.distributed; explicit arguments or a cluster's own
  environment (SLURM, Open MPI, Cloud TPU pods) do."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
  for name in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  initialize_distributed()
  initialize_distributed(None, 1)
  assert calls == []
  initialize_distributed("localhost:1234", 2, 1)
  initialize_distributed(None, 2, 0)
  assert calls == [("localhost:1234", 2, 1), (None, 2, 0)]
  monkeypatch.setenv("SLURM_NTASKS", "4")
  initialize_distributed()
  assert calls[-1] == ()


@pytest.mark.slow
def test_eight_devices_equal_one_device_bn_statistics_included():
  state, step, batches = small_step_setup()
  one, m1 = train_on("shard_map", jax.devices()[:1], state, step, batches)
  eight, m8 = train_on("shard_map", jax.devices(), state, step, batches)
  assert int(eight.step) == 3
  close = functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5)
  jax.tree.map(close, eight.params, one.params)
  jax.tree.map(close, eight.batch_stats, one.batch_stats)
  close(m8["train_loss"], m1["train_loss"])
  # and training moved the parameters at all
  assert not np.allclose(one.params["fc"]["kernel"], state.params["fc"]["kernel"])


@pytest.mark.slow
def test_pmap_and_shard_map_give_the_same_step():
  state, step, batches = small_step_setup()
  a, _ = train_on("shard_map", jax.devices(), state, step, batches)
  b, _ = train_on("pmap", jax.devices(), state, step, batches)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  jax.tree.map(close, a.params, b.params)
  jax.tree.map(close, a.batch_stats, b.batch_stats)
  jax.tree.map(close, a.opt_state, b.opt_state)
