"""cpu_ops.max_pool: nn.max_pool's outputs and gradients (each window's gradient to its first
maximum, as XLA's select-and-scatter gives it), with an elementwise backward pass."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet import cpu, create_model
from flax_resnet.cpu_ops import max_pool

# (height, width, window, strides, padding): the ResNet stem's 3x3/2 on even and odd maps,
# and other windows.
CASES = [(8, 8, 3, 2, 1), (7, 9, 3, 2, 1), (14, 14, 3, 2, 1), (6, 6, 2, 2, 0),
         (5, 5, 3, 1, 1), (9, 8, 3, 3, 0)]


def _value_and_grad(pool, x, window, strides, padding):
  pad = ((padding, padding), (padding, padding))
  f = lambda x: pool(x, (window, window), (strides, strides), padding=pad)
  y, vjp = jax.vjp(f, x)
  dy = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), x.dtype)
  return y, vjp(dy)[0]


@pytest.mark.parametrize("h,w,window,strides,padding", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_outputs_and_gradients_equal_nn_max_pool(h, w, window, strides, padding, ties):
  rng = np.random.default_rng(0)
  x = (rng.integers(0, 3, (2, h, w, 3)) if ties   # many equal maxima per window
       else rng.standard_normal((2, h, w, 3)))
  x = jnp.asarray(x, jnp.float32)
  y_ref, dx_ref = _value_and_grad(nn.max_pool, x, window, strides, padding)
  y, dx = jax.jit(lambda x: _value_and_grad(max_pool, x, window, strides, padding))(x)
  np.testing.assert_array_equal(y, y_ref)
  # Equal but for the order of the sums where windows overlap.
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_and_string_paddings():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4), jnp.bfloat16)
  y, dx = _value_and_grad(max_pool, x, 3, 2, 1)
  y_ref, dx_ref = _value_and_grad(nn.max_pool, x, 3, 2, 1)
  assert y.dtype == dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32),
                             rtol=1e-2, atol=1e-2)
  for padding in ("SAME", "VALID"):  # handed to nn.max_pool
    np.testing.assert_array_equal(max_pool(x, (3, 3), (2, 2), padding),
                                  nn.max_pool(x, (3, 3), (2, 2), padding=padding))


def _compiled_gradient(model, size):
  x = jnp.ones((2, size, size, 3))
  variables = model.init(jax.random.key(0), x)
  loss = lambda p: model.apply({**variables, "params": p}, x, train=True,
                               mutable=["batch_stats"])[0].sum()
  return variables, loss, jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()


def _operations(hlo: str) -> set[str]:
  """The HLO operation names of a compiled program, fused computations included."""
  return set(re.findall(r"= \S+ ([a-z-]+)\(", hlo))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU question")
@pytest.mark.slow
def test_cpu_overrides_leave_no_scatter_and_change_no_number():
  small = dict(widths=(4, 8, 8, 8))
  plain = create_model("resnet18", **small)
  fast = create_model("resnet18", **small, **cpu.model_overrides(backend="cpu"))
  variables, plain_loss, plain_hlo = _compiled_gradient(plain, 32)
  _, fast_loss, fast_hlo = _compiled_gradient(fast, 32)
  # XLA:CPU expands select-and-scatter into an arg-max reduce-window and a scatter.
  assert "scatter" in _operations(plain_hlo)  # the check has teeth
  assert "scatter" not in _operations(fast_hlo)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               jax.grad(fast_loss)(variables["params"]),
               jax.grad(plain_loss)(variables["params"]))
