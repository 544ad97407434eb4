"""Test setup: 8 virtual CPU devices, so data-parallel code is tested without accelerators.

XLA reads this flag once, when JAX initializes its backend, so it must be set before anything
imports jax.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from flax_resnet import cpu  # noqa: E402  (starts no backend)

# As train.py does: freed host memory kept for reuse, and the convolution library that is the
# faster on this CPU (the device count of 8 above stays).
cpu.configure_cpu()


# --- Input pipeline fixtures -------------------------------------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir with fashion_mnist prepared once per session from Debian's local IDX files
  (about 20 s, no network)."""
  from flax_resnet import fashion_mnist_local
  data_dir = tmp_path_factory.mktemp("tfds_data")
  fashion_mnist_local.prepare(data_dir)
  return str(data_dir)
