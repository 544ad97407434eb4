"""CPU defaults (flax_resnet.cpu): device count and the reuse of freed host memory."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from flax_resnet import cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configure_cpu_leaves_a_users_settings_alone(monkeypatch):
  users = ("--xla_force_host_platform_device_count=3 "
           "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT")
  monkeypatch.setenv("XLA_FLAGS", users)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for library in cpu.CONVOLUTION_LIBRARIES:
    assert cpu.configure_cpu(reuse_host_memory=False, convolution_library=library) == 3
    assert os.environ["XLA_FLAGS"] == users


def test_configure_cpu_after_the_backends_started_says_so(monkeypatch):
  jax.devices()  # starts the backends
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(RuntimeError, match="before any jax.devices"):
    cpu.configure_cpu(reuse_host_memory=False)


def test_eigen_computes_convolutions_unless_asked_otherwise(monkeypatch):
  # Eigen is exact in float32 on every CPU; YNNPACK is not on CPUs with AMX.
  monkeypatch.delenv(cpu.CONVOLUTIONS_ENV, raising=False)
  assert cpu.DEFAULT_CONVOLUTION_LIBRARY == "eigen"
  assert cpu.resolve_convolution_library() == "eigen"


def test_configure_cpu_sends_convolutions_to_the_library_asked_for(monkeypatch):
  monkeypatch.setattr(cpu, "_backends_started", lambda: False)  # as at the top of a program
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  cpu.configure_cpu(reuse_host_memory=False, convolution_library="ynnpack")
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  cpu.configure_cpu(reuse_host_memory=False, convolution_library="eigen")
  assert os.environ["XLA_FLAGS"] == (
      "--xla_force_host_platform_device_count=2 "
      "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")  # only the host platform's convolutions move
  assert cpu.configure_cpu(3, reuse_host_memory=False, convolution_library="eigen") == 3
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
  with pytest.raises(ValueError, match="unknown convolution library 'mkl' asked for"):
    cpu.configure_cpu(reuse_host_memory=False, convolution_library="mkl")


def test_the_environment_picks_the_convolution_library(monkeypatch):
  monkeypatch.setattr(cpu, "_backends_started", lambda: False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.setenv(cpu.CONVOLUTIONS_ENV, "ynnpack")
  assert cpu.resolve_convolution_library() == "ynnpack"
  assert cpu.resolve_convolution_library("eigen") == "eigen"  # an argument wins
  cpu.configure_cpu(reuse_host_memory=False)
  assert "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION" not in os.environ["XLA_FLAGS"]
  monkeypatch.setenv(cpu.CONVOLUTIONS_ENV, "onednn")
  with pytest.raises(ValueError, match="'onednn' in FLAX_RESNET_CONVOLUTIONS; use one of "
                                       "eigen, ynnpack"):
    cpu.configure_cpu(reuse_host_memory=False)


@pytest.mark.slow
def test_train_py_names_a_bad_convolution_library_in_one_line(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", cpu.CONVOLUTIONS_ENV: "onednn"}
  result = subprocess.run([sys.executable, "train.py", "--config=configs/fashion_mnist.py",
                           f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "error: unknown convolution library 'onednn' in FLAX_RESNET_CONVOLUTIONS" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


# A convolution's weight gradient, compiled in a subprocess under each library: with 'eigen'
# the program holds no YNNPACK fusion, and both give the same numbers.
_WEIGHT_GRADIENT = textwrap.dedent("""
    import sys
    import numpy as np
    from flax_resnet import cpu
    cpu.configure_cpu(1, reuse_host_memory=False, convolution_library=sys.argv[1])
    import jax, jax.numpy as jnp
    from jax import lax
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 32)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 32, 32)), jnp.float32)
    loss = lambda w: jnp.square(lax.conv_general_dilated(x, w, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))).sum()
    grad = jax.jit(jax.grad(loss))
    print("ynn" if "__ynn_fusion" in grad.lower(w).compile().as_text() else "no-ynn")
    np.save(sys.argv[2], np.asarray(grad(w)))
    """)


@pytest.mark.slow
def test_the_convolution_library_runs_the_gradient_and_agrees(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu.CONVOLUTIONS_ENV)}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  seen, grads = {}, {}
  for library in cpu.CONVOLUTION_LIBRARIES:
    path = tmp_path / f"{library}.npy"
    out = subprocess.run([sys.executable, "-c", _WEIGHT_GRADIENT, library, str(path)], env=env,
                         check=True, capture_output=True, text=True, timeout=300).stdout
    seen[library] = out.split()[-1]
    grads[library] = np.load(path)
  assert seen == {"ynnpack": "ynn", "eigen": "no-ynn"}
  # Float32 sums of 2,048 products each, in another order: equal to 1e-5 of the largest.
  scale = np.abs(grads["ynnpack"]).max()
  np.testing.assert_allclose(grads["eigen"], grads["ynnpack"], rtol=0, atol=1e-5 * scale)


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
    faults = []
    for _ in range(11):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      call()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The median call: on a loaded machine the runtime may still free a block late now and
    # then, and the heap grows once more (3 calls of 10 in one run of the suite).
    print(sorted(faults)[len(faults) // 2])
    """)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow
def test_reused_host_memory_spares_the_page_faults_of_each_call():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  faults = {}
  for mode in ("default", "reuse"):
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    faults[mode] = float(out.split()[-1])
  assert faults["default"] > 10_000, faults  # the 64 MB output, mapped anew each call
  assert faults["reuse"] < faults["default"] / 10, faults


def test_backends_started_answers_through_jax():
  """cpu._backends_started is the one use of a private JAX API: False in a fresh process that
  has imported JAX, True once the backends run. If JAX moves or drops the function, the
  second answer turns False and this test fails."""
  code = ("import jax; from flax_resnet import cpu; a = cpu._backends_started(); jax.devices(); "
          "print(a, cpu._backends_started())")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
  assert result.stdout.split() == ["False", "True"], result.stderr
