"""timm <-> Flax weight conversion (resnet*, resnet*d, resnetv2_*): names, shapes, round trips,
strict key checks, and equal logits against timm itself (run where torch and timm import,
skipped elsewhere)."""

import sys

import numpy as np
import pytest

from flax_resnet import create_model
from flax_resnet.convert_timm import TIMM_MODELS, from_timm, timm_models, to_timm
from test_convert import (assert_trees_equal, flax_logits, random_variables,
                          randomize_batch_norm)


def test_timm_names_map_onto_our_models():
  assert TIMM_MODELS["resnet50"] == "resnet50"
  assert TIMM_MODELS["resnet50d"] == "resnet50d"
  assert TIMM_MODELS["resnetv2_50"] == "preact_resnet50"
  assert "resnetv2_200" not in timm_models()  # timm has none
  assert len(timm_models()) == 6 + 6 + 5


@pytest.mark.parametrize("timm_name", ["resnet18", "resnet34d", "resnet50d", "resnetv2_18",
                                       "resnetv2_50"])
def test_round_trip_is_identity(timm_name):
  variables = random_variables(create_model(TIMM_MODELS[timm_name]))
  state = to_timm(variables, timm_name)
  model, back = from_timm(state, timm_name)
  assert model.num_classes == 1000
  assert_trees_equal(variables, back)
  again = to_timm(back, timm_name)
  assert list(again) == list(state)
  for key in state:
    np.testing.assert_array_equal(again[key], state[key], err_msg=key)


def _count(state, word):
  return sum(1 for k in state if k.endswith(word))


@pytest.mark.parametrize("name,stage_sizes,bottleneck", [
    ("resnetv2_18", (2, 2, 2, 2), False), ("resnetv2_50", (3, 4, 6, 3), True)])
def test_resnetv2_state_dict_names_and_shapes(name, stage_sizes, bottleneck):
  state = to_timm(random_variables(create_model(TIMM_MODELS[name])), name)
  # The stem conv (no BN: the first block's norm1 normalizes it); per block 2 or 3 convs, each
  # after its own BN (5 entries: weight, bias, running_mean, running_var, num_batches_tracked);
  # a BN-free projection in the first block of each stage whose shape changes (all 4 for
  # bottlenecks, stages 2-4 for basic blocks); the final norm; head.fc weight and bias.
  per_block = 3 if bottleneck else 2
  blocks = sum(stage_sizes)
  projections = 4 if bottleneck else 3
  assert _count(state, "num_batches_tracked") == per_block * blocks + 1
  assert len(state) == 1 + 6 * per_block * blocks + projections + 5 + 2
  expansion = 4 if bottleneck else 1
  assert list(state)[:3] == (
      ["stem.conv.weight", "stages.0.blocks.0.downsample.conv.weight",
       "stages.0.blocks.0.norm1.weight"] if bottleneck else
      ["stem.conv.weight", "stages.0.blocks.0.norm1.weight", "stages.0.blocks.0.norm1.bias"])
  assert state["stem.conv.weight"].shape == (64, 3, 7, 7)
  assert state["stages.1.blocks.0.norm1.running_var"].shape == (64 * expansion,)
  assert state["stages.1.blocks.0.downsample.conv.weight"].shape == (
      128 * expansion, 64 * expansion, 1, 1)
  assert "stages.1.blocks.1.downsample.conv.weight" not in state
  assert ("stages.0.blocks.0.downsample.conv.weight" in state) == bottleneck
  assert state["norm.running_mean"].shape == (512 * expansion,)
  assert state["head.fc.weight"].shape == (1000, 512 * expansion, 1, 1)
  assert state["head.fc.bias"].shape == (1000,)
  assert list(state)[-7:] == ["norm.weight", "norm.bias", "norm.running_mean",
                              "norm.running_var", "norm.num_batches_tracked",
                              "head.fc.weight", "head.fc.bias"]


def test_resnet_d_state_dict_names_and_shapes():
  state = to_timm(random_variables(create_model("resnet50d")), "resnet50d")
  assert [k for k in state if k.endswith(".weight")][:6] == [
      "conv1.0.weight", "conv1.1.weight", "conv1.3.weight", "conv1.4.weight", "conv1.6.weight",
      "bn1.weight"]
  assert state["conv1.0.weight"].shape == (32, 3, 3, 3)
  assert state["conv1.3.weight"].shape == (32, 32, 3, 3)
  assert state["conv1.6.weight"].shape == (64, 32, 3, 3)
  assert state["bn1.running_var"].shape == (64,)
  # downsample = (AvgPool2d, conv, bn): the pool has no weights
  assert not any(".downsample.0." in k for k in state)
  assert state["layer2.0.downsample.1.weight"].shape == (512, 256, 1, 1)
  assert state["layer2.0.downsample.2.running_mean"].shape == (512,)
  assert state["layer1.0.downsample.1.weight"].shape == (256, 64, 1, 1)
  plain = to_timm(random_variables(create_model("resnet50")), "resnet50")
  # the deep stem's 5 extra keys per BN and its extra convs, nothing else
  assert len(state) - len(plain) == 2 + 2 * 5
  assert "layer2.0.downsample.0.weight" in plain


def test_resnetv2_classifier_is_a_1x1_convolution():
  variables = random_variables(create_model("preact_resnet18", num_classes=10))
  state = to_timm(variables, "resnetv2_18")
  fc = np.asarray(variables["params"]["fc"]["kernel"])  # (in, out)
  assert state["head.fc.weight"].shape == (10, 512, 1, 1)
  np.testing.assert_array_equal(state["head.fc.weight"][3, 11, 0, 0], fc[11, 3])
  model, back = from_timm(state, "resnetv2_18")
  assert model.num_classes == 10
  assert_trees_equal(variables, back)


def test_strict_keys_with_a_clear_error():
  state = to_timm(random_variables(create_model("preact_resnet18")), "resnetv2_18")
  broken = dict(state)
  del broken["stages.2.blocks.1.norm2.running_mean"]
  broken["stages.4.blocks.0.conv1.weight"] = np.zeros((1,), np.float32)
  broken["stages.0.blocks.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError) as error:
    from_timm(broken, "resnetv2_18")
  message = str(error.value)
  assert "state dict does not fit timm's resnetv2_18" in message
  assert "missing: stages.2.blocks.1.norm2.running_mean" in message
  assert "unexpected: stages.4.blocks.0.conv1.weight" in message
  assert ("stages.0.blocks.0.conv2.weight is (64, 64, 1, 1), expected (64, 64, 3, 3)"
          in message)
  plain = to_timm(random_variables(create_model("resnet50")), "resnet50")
  with pytest.raises(ValueError, match="missing: conv1.0.weight"):
    from_timm(plain, "resnet50d")  # a resnet50 checkpoint for a resnet50d
  with pytest.raises(ValueError, match="missing: params/final_bn/scale"):
    to_timm(random_variables(create_model("resnet18")), "resnetv2_18")


def test_unknown_names_and_layout_changing_overrides_are_refused():
  with pytest.raises(ValueError, match="no conversion for timm's 'resnet26d'.*resnetv2_50"):
    from_timm({}, "resnet26d")
  with pytest.raises(ValueError, match="timm's resnet50d uses stem 'deep'; got stem='imagenet'"):
    from_timm({}, "resnet50d", stem="imagenet")
  with pytest.raises(ValueError, match="uses shortcut_downsample 'avg_pool'"):
    from_timm({}, "resnet50d", shortcut_downsample="stride")
  with pytest.raises(ValueError, match="uses block_cls 'PreActBottleneckBlock'"):
    from_timm({}, "resnetv2_50", block_cls=create_model("resnet50").block_cls)


def test_safetensors_file_reads_without_torch(tmp_path, monkeypatch):
  from safetensors.numpy import save_file
  variables = random_variables(create_model("resnet18d"))
  path = tmp_path / "model.safetensors"
  save_file(to_timm(variables, "resnet18d"), str(path))
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
  assert_trees_equal(variables, from_timm(path, "resnet18d")[1])


# --- Against timm itself: `pip install torch timm` (skipped where they do not import) --------

@pytest.mark.parametrize("timm_name", ["resnet18d", "resnet50d", "resnetv2_18", "resnetv2_50",
                                       "resnet50"])
def test_logits_match_timm(timm_name):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  reference = timm.create_model(timm_name, pretrained=False).eval()
  randomize_batch_norm(torch, reference)
  model, variables = from_timm(reference.state_dict(), timm_name)
  rng = np.random.default_rng(3)
  # 97 is odd at every stride: it checks the rounding of each strided output size and the
  # average pool's ceil mode of ResNet-D's shortcuts.
  for size in (97, 128):
    images = rng.normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
      expected = reference(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(flax_logits(model, variables, images), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())

  # And back: our variables load into a fresh timm model with strict=True, in timm's order.
  fresh = timm.create_model(timm_name, pretrained=False).eval()
  state = to_timm(variables, timm_name)
  assert list(state) == list(fresh.state_dict())
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  with torch.no_grad():
    np.testing.assert_allclose(fresh(torch.from_numpy(images)).numpy(), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())
