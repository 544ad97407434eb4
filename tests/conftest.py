"""Test setup: 8 virtual CPU devices, so data-parallel code is tested without accelerators.

XLA reads this flag once, when JAX initializes its backend, so it must be set before anything
imports jax.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # as train.py

# One persistent compilation cache for the session, this process and every train.py it starts
# (they inherit the environment): the many short train.py runs of the same small configs then
# compile each step function once, not once per run (about 20 s of each run on 2 cores).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  _cache_dir = tempfile.mkdtemp(prefix="flax_resnet_test_jax_cache_")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir

from flax_resnet import cpu  # noqa: E402  (starts no backend)

# The convolution library is train.py's default (flax_resnet.cpu): Eigen, exact in float32 on
# every CPU; tests/test_cpu.py sets both libraries.

# As train.py does: freed host memory kept for reuse (the device count of 8 above stays).
cpu.configure_cpu()


# --- Input pipeline fixtures -------------------------------------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir with fashion_mnist prepared once per session from Debian's local IDX files
  (about 20 s, no network)."""
  from flax_resnet.data import fashion_mnist as fashion_mnist_local
  data_dir = tmp_path_factory.mktemp("tfds_data")
  fashion_mnist_local.prepare(data_dir)
  return str(data_dir)


@pytest.fixture(scope="session")
def fake_metadata_dir(tmp_path_factory):
  """A data_dir with TFDS metadata only for imagenet2012 and cifar10 (tests/data_utils.py)."""
  from data_utils import write_fake_metadata
  data_dir = str(tmp_path_factory.mktemp("fake_tfds"))
  write_fake_metadata(data_dir)
  return data_dir


@pytest.fixture
def fake_tfds(fake_metadata_dir):
  """fake_metadata_dir, its splits served with fake examples while the test runs."""
  from data_utils import serve_fake_data
  with serve_fake_data(fake_metadata_dir):
    yield fake_metadata_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fashion_mnist_data_dir):
  """A 6-step Fashion-MNIST run of a narrow cifar_resnet20 with an EMA, checkpoints at steps
  3 and 6, each test image scored with its mirror: (workdir, config, result)."""
  import flax_resnet
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  config = flax_resnet.default_config()
  config.update(model="cifar_resnet20", widths=(4, 8, 8), shortcut="A", dataset="fashion_mnist",
                data_dir=fashion_mnist_data_dir, batch_size=64, eval_batch_size=64,
                num_train_steps=6, checkpoint_every_steps=3, eval_every_steps=6,
                log_every_steps=3, eval_examples=200, eval_flip=True, ema_decay=0.5,
                learning_rate=0.05, plot=False, cache=True)
  result = flax_resnet.train_and_evaluate(config, workdir)
  return workdir, config, result


def pytest_sessionfinish(session):
  """A pytest-xdist worker frees its compiled programs and arrays here, before it reports the
  session finished: execnet sends SIGINT to a worker still busy 5 s after that report, and the
  interrupt then lands in whatever JAX is freeing (an 'Exception ignored in _xla_gc_callback:
  KeyboardInterrupt' in the output)."""
  import gc
  import sys
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  gc.collect()
