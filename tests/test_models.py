"""The model family against the tables of He et al. (2016) and its follow-ups, and timm's counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_resnet
from flax_resnet import count_macs, count_params, create_model, summary
from flax_resnet.counting import layers
from flax_resnet.models import BasicBlock, BottleneckBlock, Shortcut
from flax_resnet.preact import PreActBasicBlock, PreActBottleneckBlock
from flax_resnet.stochastic_depth import DropPath, drop_path_rates

# torchvision's parameter counts (option B shortcuts, 1000 classes).
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
CIFAR_PARAMS = {
    "cifar_resnet20": 0.27e6,
    "cifar_resnet32": 0.46e6,
    "cifar_resnet44": 0.66e6,
    "cifar_resnet56": 0.85e6,
    "cifar_resnet110": 1.7e6,
}
CIFAR = (1, 32, 32, 3)


@pytest.mark.parametrize("name,expected", IMAGENET_PARAMS.items())
def test_imagenet_parameter_counts_equal_torchvision(name, expected):
  assert count_params(create_model(name)) == expected


@pytest.mark.parametrize("name,expected", CIFAR_PARAMS.items())
def test_cifar_parameter_counts_match_paper(name, expected):
  assert count_params(create_model(name), CIFAR) == pytest.approx(expected, rel=0.02)


@pytest.mark.slow
def test_cifar_resnet1202_parameter_count():
  assert count_params(create_model("cifar_resnet1202"), CIFAR) == pytest.approx(19.4e6, rel=0.02)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_option_a_adds_no_parameters_over_plain(depth):
  residual = count_params(create_model(f"cifar_resnet{depth}"), CIFAR)
  plain = count_params(create_model(f"cifar_plain{depth}"), CIFAR)
  assert residual == plain


def test_shortcut_options_order_parameters():
  a, b, c = (count_params(create_model("resnet34", shortcut=o)) for o in "ABC")
  assert a < b < c
  assert b == IMAGENET_PARAMS["resnet34"]
  assert a == count_params(create_model("plain34"))


# Paper's multiply-adds (stride on the 1x1, "v1") and torchvision's labels (stride on the 3x3).
PAPER_MACS = {"resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}
TORCHVISION_MACS = {"resnet50": 4.089e9, "resnet101": 7.801e9, "resnet152": 11.514e9}


@pytest.mark.parametrize("name,expected", PAPER_MACS.items())
def test_v1_multiply_adds_match_paper(name, expected):
  assert count_macs(create_model(name, stride_in_1x1=True)) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("name,expected", TORCHVISION_MACS.items())
def test_v15_multiply_adds_match_torchvision(name, expected):
  assert count_macs(create_model(name)) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("name,expected", [("resnet18", 1.8e9), ("resnet34", 3.6e9)])
def test_basic_block_multiply_adds_match_paper(name, expected):
  assert count_macs(create_model(name)) == pytest.approx(expected, rel=0.03)


def test_stride_placement_v1_and_v15():
  """v1 downsamples in conv1 (the first 1x1), v1.5 in conv2 (the 3x3)."""
  def shapes(v1):
    return {l.path: l.output_shape for l in
            layers(create_model("resnet50", stride_in_1x1=v1))}
  v1, v15 = shapes(True), shapes(False)
  assert v1["stage2/block1/conv1"][1:3] == (28, 28)
  assert v15["stage2/block1/conv1"][1:3] == (56, 56)
  assert v1["stage2/block1/conv2"][1:3] == v15["stage2/block1/conv2"][1:3] == (28, 28)


def test_imagenet_feature_map_sizes():
  rows = {l.path: l.output_shape for l in layers(create_model("resnet18"))}
  assert rows["stem/conv"] == (1, 112, 112, 64)
  assert rows["stage1/block1/conv1"] == (1, 56, 56, 64)
  assert rows["stage4/block2/conv2"] == (1, 7, 7, 512)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="resnet50.*cifar_plain110"):
    create_model("resnet51")


def test_unknown_field_is_rejected():
  with pytest.raises(ValueError, match="unknown ResNet field"):
    create_model("resnet18", num_clases=10)


def test_every_named_constructor_is_exported():
  for name in ("ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet200",
               "Plain18", "Plain34", "CifarResNet20", "CifarResNet110", "CifarResNet1202",
               "CifarPlain20", "CifarPlain110"):
    model = getattr(flax_resnet, name)()
    assert isinstance(model, flax_resnet.ResNet)
  assert flax_resnet.ResNet50().stage_sizes == (3, 4, 6, 3)
  # 19 of the 2016 paper, 6 ResNet-D, 6 ImageNet and 7 CIFAR pre-activation nets
  assert len(flax_resnet.model_names()) == 38


@pytest.fixture(scope="module")
def small_resnet():
  model = create_model("cifar_resnet20", num_classes=7)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  return model, variables, x


def test_train_mode_updates_batch_stats_eval_does_not(small_resnet):
  model, variables, x = small_resnet
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 7)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  logits_eval, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"],
               eval_updates["batch_stats"])
  assert np.isfinite(logits).all() and np.isfinite(logits_eval).all()


@pytest.mark.slow
def test_bfloat16_logits_close_to_float32(small_resnet):
  model, variables, x = small_resnet
  bf16 = create_model("cifar_resnet20", num_classes=7, dtype=jnp.bfloat16)
  out32 = model.apply(variables, x)
  out16 = bf16.apply(variables, x)
  assert out16.dtype == jnp.float32  # logits are returned in float32 for the loss
  scale = float(jnp.max(jnp.abs(out32)))
  np.testing.assert_allclose(out16, out32, atol=0.05 * scale + 1e-2)
  params16 = jax.tree.leaves(bf16.init(jax.random.key(0), x)["params"])
  assert all(p.dtype == jnp.float32 for p in params16)


@pytest.mark.parametrize("block_cls,features", [(BasicBlock, 16), (BottleneckBlock, 4)])
@pytest.mark.slow
def test_zero_init_residual_block_is_identity(block_cls, features):
  """With the last BN's scale at zero, a fresh block computes relu(x) = x for x >= 0."""
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 8, 8, 16)))
  norm = nn.BatchNorm
  block = block_cls(features, zero_init_residual=True, conv=nn.Conv,
                    norm=lambda **kw: norm(use_running_average=False, **kw))
  variables = block.init(jax.random.key(1), x)
  y, _ = block.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y, x, atol=1e-6)
  # and the model-level switch reaches every block's last BN
  model = create_model("resnet50", zero_init_residual=True)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert "bn3" in params["params"]["stage1"]["block1"]
  real = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  assert not np.any(real["stage1"]["block1"]["bn3"]["scale"])
  assert np.all(real["stage1"]["block1"]["bn2"]["scale"] == 1)


def test_option_a_shortcut_zero_pads_new_channels():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  out = Shortcut(5, 2, "A", nn.Conv, nn.BatchNorm).apply({}, x)
  assert out.shape == (2, 2, 2, 5)
  np.testing.assert_array_equal(out[..., :3], x[:, ::2, ::2, :])
  np.testing.assert_array_equal(out[..., 3:], 0)


@pytest.mark.parametrize("size", [32, 57, 96])
@pytest.mark.slow
def test_any_input_size(size):
  model = create_model("resnet18", num_classes=3, widths=(8, 8, 8, 8))
  x = jnp.ones((2, size, size, 3))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (2, 3)


@pytest.mark.slow
def test_return_features():
  model = create_model("resnet18", num_classes=3, widths=(8, 16, 16, 32))
  x = jnp.ones((2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x)
  feats = model.apply(variables, x, return_features=True)
  assert feats["stem"].shape == (2, 16, 16, 8)
  assert feats["stage4"].shape == (2, 2, 2, 32)
  assert feats["pooled"].shape == (2, 32)
  np.testing.assert_array_equal(feats["logits"], model.apply(variables, x))


def test_plain_nets_have_no_shortcut_modules():
  params = jax.eval_shape(lambda: create_model("plain18").init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert "shortcut" not in params["stage2"]["block1"]
  params = jax.eval_shape(lambda: create_model("resnet18").init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert "shortcut" in params["stage2"]["block1"]
  assert "shortcut" not in params["stage1"]["block1"]  # option B: identity where shapes match


def test_summary_prints_totals():
  text = summary(create_model("resnet18"))
  assert "stage4/block2/conv2" in text
  assert "11,689,512 parameters" in text
  assert "1.814 G multiply-adds" in text


# --- Beyond the 2016 paper: ResNet-D, pre-activation, stochastic depth ----------------------

# timm 1.0.31's parameter counts: resnet*d (ResNet-D) and the BatchNorm pre-activation
# resnetv2_* (timm has no resnetv2_200).
TIMM_PARAMS = {
    "resnet18d": 11_708_744,
    "resnet34d": 21_816_904,
    "resnet50d": 25_576_264,
    "resnet101d": 44_568_392,
    "resnet152d": 60_212_040,
    "resnet200d": 64_693_064,
    "preact_resnet18": 11_687_720,   # resnetv2_18
    "preact_resnet34": 21_795_880,
    "preact_resnet50": 25_549_352,
    "preact_resnet101": 44_541_480,
    "preact_resnet152": 60_185_128,
}


@pytest.mark.parametrize("name,expected", TIMM_PARAMS.items())
def test_resnet_d_and_preact_parameter_counts_equal_timm(name, expected):
  assert count_params(create_model(name)) == expected


# "Identity Mappings" (He et al. 2016), Tables 3-4: ResNet-110 (basic blocks), 164 and 1001
# (bottlenecks) on CIFAR. Its figures are within 2% of ours; without BatchNorm's parameters
# ResNet-1001 has 10.18M.
@pytest.mark.parametrize("name,expected", [
    ("preact_resnet110", 1.7e6), ("preact_resnet164", 1.7e6), ("preact_resnet1001", 10.2e6)])
@pytest.mark.slow
def test_preact_cifar_parameter_counts_match_paper(name, expected):
  assert count_params(create_model(name), CIFAR) == pytest.approx(expected, rel=0.02)


def test_preact_cifar_basic_nets_have_the_2016_cifar_nets_parameters():
  """BN moves, none is added: the stem's becomes the first block's bn1, each block's bn2
  the next one's bn1, and the last block's the final BN."""
  for depth in (20, 56):
    preact = count_params(create_model(f"preact_resnet{depth}"), CIFAR)
    assert preact == count_params(create_model(f"cifar_resnet{depth}"), CIFAR)


@pytest.mark.parametrize("name,overrides,size", [
    ("resnet18d", dict(widths=(8, 8, 16, 16)), 57),
    ("resnet50d", dict(widths=(8, 8, 16, 16), stage_sizes=(1, 2, 1, 1)), 64),
    ("preact_resnet18", dict(widths=(8, 8, 16, 16)), 57),
    ("preact_resnet50", dict(widths=(8, 8, 16, 16), stage_sizes=(1, 2, 1, 1)), 64),
    ("preact_resnet20", dict(), 32),
    ("preact_resnet164", dict(stage_sizes=(2, 2, 2)), 32),
])
@pytest.mark.slow
def test_forward_pass_of_each_new_family(name, overrides, size):
  model = create_model(name, num_classes=7, drop_path_rate=0.2, **overrides)
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  variables = model.init(jax.random.key(1), x)
  logits = model.apply(variables, x)
  assert logits.shape == (2, 7) and np.isfinite(logits).all()
  train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(2)})
  assert train_logits.shape == (2, 7) and np.isfinite(train_logits).all()
  assert updates["batch_stats"].keys() == variables["batch_stats"].keys()


def test_deep_stem_shapes():
  rows = {l.path: l for l in layers(create_model("resnet50d"))}
  assert rows["stem/conv1"].output_shape == (1, 112, 112, 32)
  assert rows["stem/conv2"].output_shape == (1, 112, 112, 32)
  assert rows["stem/conv3"].output_shape == (1, 112, 112, 64)
  assert rows["stem/bn3"].output_shape == (1, 112, 112, 64)
  assert rows["stage1/block1/conv1"].output_shape == (1, 56, 56, 64)
  assert "stem/conv" not in rows


@pytest.mark.parametrize("size", [8, 7])
def test_avg_pool_shortcut_pools_2x2_before_a_stride_1_projection(size):
  """ResNet-D's shortcut averages each 2x2 window (an odd input's last row and column on
  their own, as PyTorch's ceil_mode=True, count_include_pad=False) and then projects."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 4))
  shortcut = Shortcut(6, 2, "B", nn.Conv, None, downsample="avg_pool")
  variables = shortcut.init(jax.random.key(1), x)
  kernel = variables["params"]["conv"]["kernel"][0, 0]  # (in, out)
  out = (size + 1) // 2
  pooled = np.zeros((2, out, out, 4), np.float32)
  for i in range(out):
    for j in range(out):
      pooled[:, i, j] = np.asarray(x)[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(shortcut.apply(variables, x), pooled @ np.asarray(kernel),
                             rtol=1e-5, atol=1e-5)
  strided = Shortcut(6, 2, "B", nn.Conv, None).apply(variables, x)
  assert strided.shape == (2, out, out, 6)


def test_resnet_d_differs_from_resnet_only_in_stem_and_shortcut_pooling():
  def params(name):
    return jax.eval_shape(lambda: create_model(name).init(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  plain, d = params("resnet50"), params("resnet50d")
  assert set(plain) == set(d)
  for stage in ("stage1", "stage2", "stage3", "stage4"):
    assert (jax.tree.map(lambda a: a.shape, plain[stage])
            == jax.tree.map(lambda a: a.shape, d[stage]))
  assert set(d["stem"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}


def test_preact_layout_stem_without_bn_clean_shortcuts_and_final_bn():
  params = jax.eval_shape(lambda: create_model("preact_resnet50").init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert set(params["stem"]) == {"conv"}  # the first block's bn1 normalizes the stem
  assert "final_bn" in params
  block = params["stage2"]["block1"]
  assert set(block["shortcut"]) == {"conv"}  # the projection has no BN of its own
  assert block["bn1"]["scale"].shape == (256,)  # bn1 normalizes the block's input
  assert "shortcut" not in params["stage2"]["block2"]
  basic = jax.eval_shape(lambda: create_model("preact_resnet18").init(
      jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert "shortcut" not in basic["stage1"]["block1"]  # same shape: the identity


@pytest.mark.parametrize("block_cls,features", [(PreActBasicBlock, 16),
                                                (PreActBottleneckBlock, 4)])
def test_preact_block_is_exactly_the_identity_when_its_last_conv_is_zero(block_cls, features):
  """Nothing follows the addition: a zero residual branch passes x through unchanged,
  negative values included (a post-activation block would clip them with its ReLU)."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
  block = block_cls(features, zero_init_residual=True,
                    norm=lambda **kw: nn.BatchNorm(use_running_average=False, **kw))
  variables = block.init(jax.random.key(1), x)
  y, _ = block.apply(variables, x, mutable=["batch_stats"])
  np.testing.assert_array_equal(y, x)


def test_drop_path_scales_survivors_in_training_and_is_the_identity_at_eval():
  y = jnp.ones((4000, 3, 3, 2))
  out = DropPath(deterministic=False).apply({}, y, 0.25, rngs={"dropout": jax.random.key(0)})
  per_example = np.asarray(out).reshape(4000, -1)
  # each example's branch is kept whole (scaled by 1 / (1 - 0.25)) or dropped whole
  assert set(np.unique(per_example)) <= {0.0, np.float32(1 / 0.75)}
  assert (per_example == per_example[:, :1]).all()
  assert np.mean(per_example[:, 0] == 0) == pytest.approx(0.25, abs=0.03)
  assert float(out.mean()) == pytest.approx(1.0, abs=0.05)  # the expectation is unchanged
  np.testing.assert_array_equal(DropPath(deterministic=True).apply({}, y, 0.25), y)
  np.testing.assert_array_equal(DropPath(deterministic=False).apply({}, y, 0.0), y)  # no rng
  dropped = DropPath(deterministic=False).apply({}, y, 1.0, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_array_equal(dropped, 0)


def test_drop_path_rates_rise_linearly_over_all_blocks():
  rates = drop_path_rates(0.3, (2, 3))
  np.testing.assert_allclose(sum(rates, []), [0.0, 0.075, 0.15, 0.225, 0.3])
  assert [len(r) for r in rates] == [2, 3]
  assert drop_path_rates(0.3, (1,)) == [[0.0]]


@pytest.mark.parametrize("scan_blocks", [False, True])
@pytest.mark.slow
def test_each_block_receives_its_drop_path_rate(scan_blocks):
  model = create_model("preact_resnet20", widths=(4, 4, 4), stage_sizes=(2, 3, 2),
                       drop_path_rate=0.6, scan_blocks=scan_blocks)
  x = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.key(0), x)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, DropPath):  # the rate, when the step runs (scanned: traced)
      jax.debug.callback(lambda rate: seen.append(float(rate)), args[1])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.block_until_ready(model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.key(1)}))
  np.testing.assert_allclose(sorted(seen), sum(drop_path_rates(0.6, (2, 3, 2)), []),
                             rtol=1e-6)


def test_drop_path_needs_the_dropout_rng_in_training_only():
  model = create_model("preact_resnet20", widths=(4, 4, 4), drop_path_rate=0.5)
  reference = create_model("preact_resnet20", widths=(4, 4, 4))
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  variables = reference.init(jax.random.key(0), x)
  np.testing.assert_array_equal(model.apply(variables, x), reference.apply(variables, x))
  with pytest.raises(Exception, match="dropout"):
    model.apply(variables, x, train=True, mutable=["batch_stats"])
  a, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                     rngs={"dropout": jax.random.key(1)})
  b, _ = reference.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(a, b)


def test_new_fields_are_checked():
  with pytest.raises(ValueError, match="drop_path_rate needs residual blocks"):
    create_model("plain18", drop_path_rate=0.1).init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="unknown shortcut_downsample"):
    create_model("resnet18", shortcut_downsample="pool").init(
        jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="unknown stem 'deeper'"):
    create_model("resnet18", stem="deeper").init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))


def test_summary_of_a_preact_net():
  text = summary(create_model("preact_resnet50"))
  assert "final_bn" in text and "stage4/block3/shortcut" not in text
  assert "25,549,352 parameters" in text


@pytest.mark.slow
def test_classifier_starts_as_torchvisions():
  # PyTorch's nn.Linear default (torchvision, fb.resnet.torch): kernel and bias uniform in
  # +-1/sqrt(fan_in), so the kernel's variance is 1 / (3 fan_in); Flax's Dense default has 3x.
  fc = create_model("resnet50").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]["fc"]
  kernel, bias, bound = np.asarray(fc["kernel"]), np.asarray(fc["bias"]), 1 / np.sqrt(2048)
  assert kernel.shape == (2048, 1000) and np.abs(kernel).max() <= bound
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.9 * bound
  np.testing.assert_allclose(kernel.var(), 1 / (3 * 2048), rtol=0.01)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5])
def test_num_classes_must_be_a_positive_integer(num_classes):
  with pytest.raises(ValueError, match="num_classes must be a positive integer"):
    create_model("resnet18", num_classes=num_classes)


@pytest.mark.slow
def test_an_input_that_is_not_nhwc_says_the_model_takes_nhwc():
  model = create_model("cifar_resnet20")
  for nchw in [(2, 3, 32, 32), (2, 1, 28, 28)]:
    with pytest.raises(ValueError, match=r"looks channels-first \(NCHW\).*transpose"):
      model.init(jax.random.key(0), jnp.ones(nchw))
  with pytest.raises(ValueError, match=r"takes a batch of NHWC images.*shape \(32, 32, 3\)"):
    model.init(jax.random.key(0), jnp.ones((32, 32, 3)))
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="looks channels-first"):
    model.apply(variables, jnp.ones((2, 3, 32, 32)))
  with pytest.raises(ValueError, match="stem takes 3-channel images.*with 1 channels"):
    model.apply(variables, jnp.ones((2, 32, 32, 1)))
  # the deep stem's first convolution is the one checked; NHWC inputs pass
  deep = create_model("resnet18d", num_classes=5)
  variables = deep.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="stem takes 3-channel images"):
    deep.apply(variables, jnp.ones((1, 32, 32, 4)))
  assert deep.apply(variables, jnp.ones((1, 32, 32, 3))).shape == (1, 5)
