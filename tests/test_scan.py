"""`scan_blocks=True` (blocks 2..N of a stage compiled once with nn.scan) computes what the
default unrolled network computes, the layout mappings between the two are exact inverses,
and on the CPU, with `cpu.model_overrides`, the scanned blocks keep the fast convolution
kernels (cpu_ops.canonical_conv), as does gradient accumulation's micro-batch loop, and no
transpose recomputes the residual stream (cpu_ops.materialize)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_resnet import cpu, loop, optim
from flax_resnet.config import default_config
from flax_resnet.cpu_ops import canonical_conv, materialize
from flax_resnet.named_models import create_model
from flax_resnet.scan_layout import (scanned_to_unrolled, to_scanned_layout, to_unrolled_layout,
                                     unrolled_to_scanned)
from flax_resnet.parallel import DataParallel
from flax_resnet.parallel import AXIS
from flax_resnet.step import (StepSettings, TrainState, accumulated_grads, create_train_state,
                              train_step)
from train_utils import run_train, saved_state

# A narrow CIFAR ResNet-20 (3 blocks per stage, option A shortcuts) and a narrow bottleneck
# net with projection shortcuts everywhere (option C: the scanned blocks have a shortcut too).
SMALL = [
    ("cifar_resnet20", dict(widths=(4, 8, 16)), 8),
    ("resnet50", dict(widths=(4, 4, 8, 8), stage_sizes=(2, 3, 1, 2), shortcut="C",
                      num_classes=7), 32),
]


def _images(size, n=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol),
               a, b)


@pytest.mark.parametrize("name,overrides,size", SMALL)
@pytest.mark.slow
def test_mapped_layout_matches_scanned_init(name, overrides, size):
  x = _images(size)
  unrolled = create_model(name, **overrides).init(jax.random.key(0), x)
  scanned = create_model(name, scan_blocks=True, **overrides).init(jax.random.key(0), x)
  assert "blocks" in scanned["params"]["stage1"] and "block2" not in scanned["params"]["stage1"]
  shapes = lambda t: jax.tree.map(jnp.shape, t)
  assert shapes(unrolled_to_scanned(unrolled)) == shapes(scanned)
  assert shapes(scanned_to_unrolled(scanned)) == shapes(unrolled)


@pytest.mark.parametrize("name,overrides,size", SMALL)
@pytest.mark.slow
def test_round_trips_are_the_identity(name, overrides, size):
  x = _images(size)
  unrolled = create_model(name, **overrides).init(jax.random.key(0), x)
  scanned = create_model(name, scan_blocks=True, **overrides).init(jax.random.key(3), x)
  _assert_trees_close(scanned_to_unrolled(unrolled_to_scanned(unrolled)), unrolled, rtol=0,
                      atol=0)
  _assert_trees_close(unrolled_to_scanned(scanned_to_unrolled(scanned)), scanned, rtol=0,
                      atol=0)


@pytest.mark.parametrize("name,overrides,size", SMALL)
@pytest.mark.slow
def test_same_logits_and_batch_stats(name, overrides, size):
  x = _images(size)
  model = create_model(name, **overrides)
  scanned_model = create_model(name, scan_blocks=True, **overrides)
  variables = model.init(jax.random.key(0), x)
  mapped = unrolled_to_scanned(variables)
  np.testing.assert_allclose(scanned_model.apply(mapped, x), model.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  scanned_logits, scanned_updates = scanned_model.apply(mapped, x, train=True,
                                                        mutable=["batch_stats"])
  # Train-mode BN in the last stage normalizes 4 values per channel here, which magnifies
  # float rounding (the two layouts fuse differently) to ~1e-4.
  np.testing.assert_allclose(scanned_logits, logits, rtol=1e-3, atol=1e-3)
  _assert_trees_close(scanned_to_unrolled(scanned_updates), updates, rtol=1e-4, atol=1e-5)


def _optimizer():
  """The library's SGD (momentum, weight decay on kernels only) at a constant rate."""
  config = default_config()
  config.update(batch_size=8, learning_rate=0.1, lr_reference_batch_size=0,
                lr_schedule="constant", momentum=0.9, weight_decay=1e-4)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=10, num_train_steps=10)
  return optim.create_optimizer(config, lr_fn), lr_fn


def _two_train_steps(model, state, batch, parallel):
  tx, lr_fn = _optimizer()
  settings = StepSettings(model=model, num_classes=model.num_classes, tx=tx,
                          learning_rate_fn=lr_fn)
  step = parallel.map_step(functools.partial(train_step, settings=settings))
  state = parallel.put_state(state)
  batch = parallel.put_batch(batch)
  for _ in range(2):
    state, metrics = step(state, batch)
  return parallel.get_state(state), parallel.get_metrics(metrics)


@pytest.mark.slow
def test_same_train_steps_after_mapping():
  """Two data-parallel SGD steps (momentum, weight decay on kernels, synchronized BN) from the
  same variables end in the same state, whichever layout the network is compiled in."""
  name, overrides, size = SMALL[0]
  model = create_model(name, axis_name=AXIS, **overrides)
  scanned_model = create_model(name, axis_name=AXIS, scan_blocks=True, **overrides)
  parallel = DataParallel("shard_map", jax.devices()[:2])
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((8, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, model.num_classes, 8).astype(np.int32)}
  tx, _ = _optimizer()
  state = create_train_state(model, tx, (size, size, 3), jax.random.key(0))
  scanned_state = TrainState(
      step=state.step, params=unrolled_to_scanned(state.params),
      batch_stats=unrolled_to_scanned(state.batch_stats),
      opt_state=tx.init(unrolled_to_scanned(state.params)))

  state, metrics = _two_train_steps(model, state, batch, parallel)
  scanned_state, scanned_metrics = _two_train_steps(scanned_model, scanned_state, batch,
                                                    parallel)
  np.testing.assert_allclose(scanned_metrics["train_loss"], metrics["train_loss"], rtol=1e-5)
  _assert_trees_close(scanned_to_unrolled(scanned_state.params), state.params, rtol=1e-4,
                      atol=1e-5)
  _assert_trees_close(scanned_to_unrolled(scanned_state.batch_stats), state.batch_stats,
                      rtol=1e-4, atol=1e-5)


def test_mixed_layout_is_rejected():
  x = _images(8)
  params = create_model("cifar_resnet20", widths=(4, 8, 16)).init(jax.random.key(0), x)
  stage = dict(params["params"]["stage1"])
  del stage["block2"]
  with pytest.raises(ValueError, match="block1..blockN"):
    unrolled_to_scanned({"stage1": stage})


# --- the CPU convolution of scanned blocks ---------------------------------------------------

CONV_CASES = [  # input, kernel, strides, padding: every convolution a ResNet has, and odd sizes
    ((2, 8, 8, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 9, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 3), (3, 3, 3, 5), (2, 2), "SAME"),
    ((2, 9, 7, 3), (1, 1, 3, 5), (2, 2), "VALID"),
    ((2, 16, 16, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
    ((2, 15, 15, 3), (7, 7, 3, 4), (2, 2), "SAME"),
]


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CONV_CASES)
def test_canonical_conv_has_the_gradients_of_lax_conv(x_shape, w_shape, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  reference = lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ours = lambda x, w: canonical_conv(x, w, strides, padding)
  y, reference_vjp = jax.vjp(reference, x, w)
  our_y, our_vjp = jax.vjp(ours, x, w)
  np.testing.assert_allclose(our_y, y, rtol=1e-6, atol=1e-6)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  for ours_grad, grad in zip(our_vjp(dy), reference_vjp(dy)):
    assert ours_grad.shape == grad.shape and ours_grad.dtype == grad.dtype
    np.testing.assert_allclose(ours_grad, grad, rtol=1e-5, atol=1e-5)


def _compiled_gradient(model, size, accum_steps: int = 1) -> str:
  """HLO text of the compiled train-mode gradient of `model` on `size` x `size` images, the
  batch in `accum_steps` micro-batches run in a loop (step.accumulated_grads) if above 1."""
  x = _images(size)
  variables = model.init(jax.random.key(0), x)

  def loss_fn(params, stats, batch, index):
    logits, new = model.apply({"params": params, "batch_stats": stats}, batch, train=True,
                              mutable=["batch_stats"])
    return logits.sum(), (logits, new["batch_stats"])

  grads = lambda p: accumulated_grads(loss_fn, p, variables["batch_stats"], x, accum_steps)[3]
  return jax.jit(grads).lower(variables["params"]).compile().as_text()


def _non_canonical_convolutions(model, size, accum_steps: int = 1):
  """Convolutions of the compiled train-mode gradient that XLA:CPU runs without its
  Eigen/YNNPACK kernels (dimension numbers other than NHWC x HWIO -> NHWC)."""
  hlo = _compiled_gradient(model, size, accum_steps)
  labels = re.findall(r"dim_labels=(\S+?)[,\s]", hlo)
  assert labels, "no convolution found in the compiled step"
  return [label for label in labels if label != "b01f_01io->b01f"]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout question")
@pytest.mark.slow
def test_scanned_blocks_keep_cpu_convolutions_canonical():
  """XLA:CPU canonicalizes convolutions only outside loops; the scanned blocks' backward pass
  must not leave any permuted convolution in the loop body (10-18x slower steps)."""
  name, overrides, size = "cifar_resnet20", dict(widths=(4, 8, 16)), 16
  unrolled = _non_canonical_convolutions(
      create_model(name, **overrides, **cpu.model_overrides(in_loops=False)), size)
  scanned = _non_canonical_convolutions(
      create_model(name, scan_blocks=True, **overrides, **cpu.model_overrides(in_loops=True)),
      size)
  assert len(scanned) <= len(unrolled), scanned
  # Without the override, the loop body keeps permuted convolutions: the check has teeth.
  plain = _non_canonical_convolutions(create_model(name, scan_blocks=True, **overrides), size)
  assert len(plain) > len(unrolled), plain


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU layout question")
@pytest.mark.slow
def test_accumulation_keeps_cpu_convolutions_canonical():
  """Gradient accumulation runs its micro-batches in a loop too: the training loop asks
  cpu.model_overrides for loop-safe convolutions whenever grad_accum_steps > 1."""
  name, overrides, size = SMALL[0]
  assert _non_canonical_convolutions(
      create_model(name, **overrides, **cpu.model_overrides(in_loops=True)), size, 2) == []
  assert _non_canonical_convolutions(  # what the loop-safe convolutions prevent
      create_model(name, **overrides, **cpu.model_overrides(in_loops=False)), size, 2)
  config = default_config()
  config.model, config.grad_accum_steps = name, 2
  conv = loop.build_model(config, num_classes=10).conv.keywords["conv_general_dilated"]
  assert conv.keywords["other"] is canonical_conv


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_materialize_is_the_identity(dtype):
  x = jnp.asarray([[1.5, -0.0, jnp.nan], [jnp.inf, -2.25, 3e-38]], dtype)
  y = jax.jit(materialize)(x)
  assert y.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y).view(np.uint8), np.asarray(x).view(np.uint8))
  grad = jax.grad(lambda v: (materialize(v) * jnp.arange(6.0).reshape(2, 3)).sum())(
      jnp.ones((2, 3)))
  np.testing.assert_array_equal(grad, jnp.arange(6.0).reshape(2, 3))


def _wide_transposes(model, size) -> list[int]:
  """Operand counts of the transposing fusions in the compiled gradient that read more than
  one BatchNorm's worth of arrays (5: input, mean, rsqrt, scale, bias): those recompute a chain
  of blocks instead of reading one stored array (1 operand)."""
  hlo = _compiled_gradient(model, size)
  fan_ins = [operands.count("%") for operands in
             re.findall(r"%\S*transpose\S* = \S+ fusion\(([^)]*)\)", hlo)]
  assert fan_ins, "no transpose fusion found in the compiled step"
  return [n for n in fan_ins if n > 5]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion question")
@pytest.mark.slow
def test_no_transpose_recomputes_the_residual_stream():
  """XLA:CPU fuses the residual stream's BN + add + ReLU chain into the transposes of the
  weight gradients; materialized ReLU outputs (cpu.model_overrides) stop that.
  One wide transpose is left: the gradient of a stage-1 output, BN's backward fused in."""
  model = create_model("cifar_resnet20", widths=(4, 8, 16), **cpu.model_overrides())
  assert len(_wide_transposes(model, 16)) <= 1
  plain = create_model("cifar_resnet20", widths=(4, 8, 16))  # what the override guards against
  assert len(_wide_transposes(plain, 16)) >= 4


@pytest.mark.slow
def test_cpu_overrides_only_on_the_cpu_and_change_no_number():
  assert cpu.model_overrides(in_loops=True, backend="gpu") == {}
  assert cpu.model_overrides(in_loops=True, backend="tpu") == {}
  name, overrides, size = SMALL[0]
  x = jax.random.normal(jax.random.key(1), (4, size, size, 3))
  plain = create_model(name, scan_blocks=True, **overrides)
  fast = create_model(name, scan_blocks=True, **overrides,
                      **cpu.model_overrides(in_loops=True, backend="cpu"))
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(fast.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  loss = lambda m: lambda p: m.apply({**variables, "params": p}, x, train=True,
                                     mutable=["batch_stats"])[0].sum()
  _assert_trees_close(jax.grad(loss(fast))(variables["params"]),
                      jax.grad(loss(plain))(variables["params"]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_layout_of_a_whole_train_state():
  """Optimizer momentum is laid out like the params, so a checkpoint maps as a whole."""
  name, overrides, size = SMALL[1]
  tx, _ = _optimizer()
  state = create_train_state(create_model(name, **overrides), tx, (size, size, 3),
                             jax.random.key(0))
  scanned = to_scanned_layout(state)
  scanned_model = create_model(name, scan_blocks=True, **overrides)
  fresh = create_train_state(scanned_model, tx, (size, size, 3), jax.random.key(0))
  assert jax.tree.structure(scanned) == jax.tree.structure(fresh)
  assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(jnp.shape, fresh)
  _assert_trees_close(to_unrolled_layout(scanned), state, rtol=0, atol=0)


@pytest.mark.slow
def test_train_py_with_scanned_blocks_writes_unrolled_checkpoints(tmp_path,
                                                                  fashion_mnist_data_dir):
  """A run with scan_blocks=True saves the unrolled layout, and a run without it resumes."""
  workdir = tmp_path / "run"
  flags = ["--config.log_every_steps=4", "--config.eval_every_steps=8",
           "--config.checkpoint_every_steps=4", "--config.batch_size=32",
           "--config.eval_batch_size=1000", "--config.plot=False",
           "--config.eval_examples=1000", "--config.eval_flip=False"]
  first = run_train(workdir, fashion_mnist_data_dir, *flags, "--config.num_train_steps=4",
                    "--config.scan_blocks=True")
  assert first.returncode == 0, first.stderr[-3000:]
  params = saved_state(workdir, 4)["params"]
  assert "block3" in params["stage2"] and "blocks" not in params["stage2"]
  second = run_train(workdir, fashion_mnist_data_dir, *flags, "--config.num_train_steps=8",
                     "--config.scan_blocks=False")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming at step 4" in second.stdout
  third = run_train(workdir, fashion_mnist_data_dir, *flags, "--config.num_train_steps=12",
                    "--config.scan_blocks=True")
  assert third.returncode == 0, third.stderr[-3000:]
  assert "resuming at step 8" in third.stdout
