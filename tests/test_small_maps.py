"""cpu_ops.small_map_conv: the same convolution as lax.conv_general_dilated (outputs and both
gradients), computed without a convolution on small maps, and untouched on larger ones; and
benchmarks/step_speed.py's --inference mode."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flax_resnet.cpu_ops import im2col_conv, is_small_map, small_map_conv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NHWC = ("NHWC", "HWIO", "NHWC")

# (map size, kernel, stride, padding): the last stages of ImageNet ResNets on small images,
# their 1x1/2 projections, and the first rewritten shape (4x4 -> 2x2, 3x3/2).
SMALL = [(2, 3, 1, "sym"), (1, 3, 1, "sym"), (4, 3, 2, "sym"), (2, 3, 2, "sym"),
         (2, 3, 1, "SAME"), (4, 3, 2, "SAME"), (3, 3, 2, "VALID"), (1, 1, 1, "VALID"),
         (4, 1, 2, "VALID"), (2, 1, 2, "VALID"), (4, 3, 1, "sym"), (3, 7, 2, "sym")]


def _padding(kernel, mode):
  return ((kernel // 2,) * 2,) * 2 if mode == "sym" else mode


def _operands(size, kernel, cin=5, cout=7, batch=3, seed=0, square=True):
  """x: N x size x size x cin (or size x size+1, to tell height from width), w: HWIO."""
  rng = np.random.default_rng(seed)
  width = size if square or size == 1 else size + 1
  x = jnp.asarray(rng.standard_normal((batch, size, width, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)) / kernel, jnp.float32)
  return x, w


def _value_and_grads(conv, x, w, stride, padding, dy_seed=1):
  f = lambda x, w: conv(x, w, (stride, stride), padding, lhs_dilation=(1, 1),
                        rhs_dilation=(1, 1), dimension_numbers=NHWC, feature_group_count=1,
                        precision=lax.Precision.HIGHEST)
  y, vjp = jax.vjp(f, x, w)
  dy = jnp.asarray(np.random.default_rng(dy_seed).standard_normal(y.shape), jnp.float32)
  return (y, *vjp(dy))


@pytest.mark.parametrize("size,kernel,stride,mode", SMALL)
@pytest.mark.slow
def test_outputs_and_gradients_equal_the_direct_convolution(size, kernel, stride, mode):
  x, w = _operands(size, kernel)
  padding = _padding(kernel, mode)
  expected = _value_and_grads(lax.conv_general_dilated, x, w, stride, padding)
  got = _value_and_grads(small_map_conv, x, w, stride, padding)
  for name, e, g in zip(("output", "input gradient", "weight gradient"), expected, got):
    assert e.shape == g.shape, name
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()),
                               err_msg=name)


@pytest.mark.parametrize("size,kernel,stride,mode", SMALL)
@pytest.mark.slow
def test_im2col_itself_equals_the_direct_convolution(size, kernel, stride, mode):
  """The rewrite, forced whatever the map size (small_map_conv may pass some through)."""
  x, w = _operands(size, kernel, cin=4, cout=6, square=False)
  padding = lax.padtype_to_pads(x.shape[1:3], w.shape[:2], (stride, stride), mode) \
      if isinstance(_padding(kernel, mode), str) else _padding(kernel, mode)
  im2col = lambda x, w, s, p, **_: im2col_conv(x, w, s, p, precision=lax.Precision.HIGHEST)
  expected = _value_and_grads(lax.conv_general_dilated, x, w, stride, padding)
  got = _value_and_grads(im2col, x, w, stride, padding)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()))


def test_the_rule_rewrites_outputs_smaller_than_the_window():
  sym = ((1, 1), (1, 1))
  assert is_small_map((2, 2), (3, 3), (1, 1), sym)  # 2x2 -> 2x2
  assert is_small_map((1, 1), (3, 3), (1, 1), sym)
  assert is_small_map((4, 4), (3, 3), (2, 2), sym)  # 4x4 -> 2x2: its input gradient was slow
  assert not is_small_map((4, 4), (3, 3), (1, 1), sym)  # 4x4 -> 4x4 ran at full speed
  assert not is_small_map((7, 7), (3, 3), (1, 1), sym)
  assert not is_small_map((1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)))  # 1x1 kernels: never
  assert not is_small_map((224, 224), (7, 7), (2, 2), ((3, 3), (3, 3)))


def _conv_layer_hlo(size, conv_fn, features=8):
  """The compiled HLO of an nn.Conv layer's forward pass and both gradients."""
  layer = nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  **({"conv_general_dilated": conv_fn} if conv_fn else {}))
  x = jnp.ones((2, size, size, 4), jnp.float32)
  params = layer.init(jax.random.key(0), x)

  def loss(params, x):
    return jnp.sum(layer.apply(params, x) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()


@pytest.mark.slow
def test_a_small_map_layer_compiles_to_no_convolution():
  assert " convolution(" in _conv_layer_hlo(2, None)  # what XLA:CPU ran slowly
  assert " convolution(" not in _conv_layer_hlo(2, small_map_conv)
  assert " convolution(" not in _conv_layer_hlo(1, small_map_conv)


def test_larger_maps_go_to_the_direct_convolution():
  ours, direct = _conv_layer_hlo(8, small_map_conv), _conv_layer_hlo(8, None)
  assert ours.count(" convolution(") == direct.count(" convolution(") == 3  # y, dx, dw


def test_nn_conv_with_the_fix_matches_nn_conv():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 2, 6)), jnp.float32)
  plain = nn.Conv(9, (3, 3), strides=2, padding="SAME")
  fixed = nn.Conv(9, (3, 3), strides=2, padding="SAME", conv_general_dilated=small_map_conv)
  params = plain.init(jax.random.key(0), x)
  np.testing.assert_allclose(fixed.apply(params, x), plain.apply(params, x), rtol=1e-5,
                             atol=1e-5)


def test_unsupported_arguments_fall_back_to_lax():
  x, w = _operands(2, 3, cin=4, cout=4)
  grouped = small_map_conv(x, w[:, :, :2], (1, 1), "SAME", dimension_numbers=NHWC,
                           feature_group_count=2)
  np.testing.assert_allclose(grouped, lax.conv_general_dilated(
      x, w[:, :, :2], (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2),
      rtol=1e-6)


@pytest.mark.slow
def test_inference_benchmark_writes_its_figures(tmp_path):
  path = tmp_path / "figures.json"
  result = subprocess.run(
      [sys.executable, "benchmarks/step_speed.py", "--model=resnet18", "--batch_size=8",
       "--image_size=32", "--devices=2", "--warmup=0", "--rounds=1", "--steps=1",
       "--inference", "--no_cpu_overrides", f"--json={path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 0, result.stderr[-2000:]
  figures = json.loads(path.read_text())
  assert figures["mode"] == "inference" and figures["cpu_overrides"] is False
  assert figures["batch_size"] == 8 and figures["devices"] == 2
  assert figures["images_per_second"] > 0 and len(figures["step_seconds_all"]) == 1
  assert figures["train_loss"] is None
  # One forward pass: the model's FLOPs are 1 x forward, and XLA counts about that (it skips
  # the taps on zero padding, many on resnet18's small maps at 32x32).
  assert figures["model_flops_per_step"] == figures["forward_flops"]
  assert 0.5 < figures["flops_vs_model_flops"] <= 1.0
  assert "inference (forward, train=False)" in result.stdout
  assert f"images_per_second: {figures['images_per_second']:.1f}" in result.stdout


def _convolutions(model, size):
  x = jnp.zeros((2, size, size, 3))
  variables = model.init(jax.random.key(0), x)
  return jax.jit(lambda v: model.apply(v, x)).lower(variables).as_text().count(
      "stablehlo.convolution")


@pytest.mark.parametrize("size,rewritten", [(32, 8), (56, 4), (224, 0)])
@pytest.mark.slow
def test_cpu_overrides_leave_no_small_map_convolution_in_resnet18(size, rewritten):
  """resnet18's 20 convolutions: at 32x32 stage 3 runs on 2x2 maps and stage 4 on 1x1 (eight
  3x3 convolutions rewritten), at 56x56 stage 4 on 2x2 (four), at 224 none."""
  from flax_resnet import cpu, create_model
  plain = _convolutions(create_model("resnet18"), size)
  fast = _convolutions(create_model("resnet18", **cpu.model_overrides(backend="cpu")), size)
  assert (plain, fast) == (20, 20 - rewritten)
