"""CPU defaults (flax_resnet.cpu): device count and the reuse of freed host memory."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from flax_resnet import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configure_cpu_leaves_a_users_device_count_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  assert cpu.configure_cpu(reuse_host_memory=False) == 3
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"


def test_configure_cpu_after_the_backends_started_says_so(monkeypatch):
  jax.devices()  # starts the backends
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(RuntimeError, match="before any jax.devices"):
    cpu.configure_cpu(reuse_host_memory=False)


@pytest.mark.parametrize("platforms, on_cpu", [("cpu", True), ("cpu,cuda", True),
                                               ("cuda,cpu", False), ("tpu", False)])
def test_cpu_is_the_platform_follows_jax_platforms(monkeypatch, platforms, on_cpu):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert cpu.cpu_is_the_platform() is on_cpu


# Each call returns a new 64 MB array: glibc maps such blocks fresh and unmaps them when freed,
# so by default every call faults 16,384 pages in; with the reuse, the heap keeps them.
_FAULTS_PER_CALL = textwrap.dedent("""
    import resource, sys
    from flax_resnet import cpu
    if sys.argv[1] == "reuse":
      assert cpu.reuse_freed_host_memory()
    import jax, jax.numpy as jnp
    x = jnp.ones((4096, 4096), jnp.float32)
    f = jax.jit(lambda x: jnp.tanh(x + 1.0) * 2.0)
    def call():
      y = f(x)
      y.block_until_ready()
      y.delete()  # freed now, not whenever the runtime gets to it
    for _ in range(50):  # the heap grows for up to 16 calls (25 were once too few), then holds
      call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
      call()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reused_host_memory_spares_the_page_faults_of_each_call():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  faults = {}
  for mode in ("default", "reuse"):
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    faults[mode] = float(out.split()[-1])
  assert faults["default"] > 10_000, faults  # the 64 MB output, mapped anew each call
  assert faults["reuse"] < faults["default"] / 10, faults
