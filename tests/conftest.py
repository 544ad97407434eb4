"""Test setup: 8 virtual CPU devices, so data-parallel code is tested without accelerators.

XLA reads this flag once, when JAX initializes its backend, so it must be set before anything
imports jax.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
