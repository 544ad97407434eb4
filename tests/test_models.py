"""The model family against the paper's tables (../shared/PAPER.md)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_resnet
from flax_resnet import count_macs, count_params, create_model, summary
from flax_resnet.summary import layers
from flax_resnet.models import BasicBlock, BottleneckBlock, Shortcut

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
  assert len(flax_resnet.model_names()) == 19


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
def test_zero_init_residual_block_is_identity(block_cls, features):
  """With the last BN's scale at zero, a fresh block computes relu(x) = x for x >= 0."""
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 8, 8, 16)))
  norm = nn.BatchNorm
  block = block_cls(features, zero_init_last_bn=True, conv=nn.Conv,
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
def test_any_input_size(size):
  model = create_model("resnet18", num_classes=3, widths=(8, 8, 8, 8))
  x = jnp.ones((2, size, size, 3))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (2, 3)


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
