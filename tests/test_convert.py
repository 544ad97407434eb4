"""torchvision <-> Flax weight conversion: names, layouts, round trips, errors, and equal logits
against a PyTorch reference (run where torch / torchvision are importable, skipped elsewhere)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flax_resnet import create_model
from flax_resnet.convert import (from_torchvision, load_state_dict, to_torchvision,
                                 torchvision_models)

TORCHVISION_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def random_variables(model, seed=0):
  """Variables of `model` with random, well-scaled values (He-normal kernels, BatchNorm
  affine terms and statistics away from their 1/0 defaults), built without running init."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(seed)
  flat = {}
  for key, leaf in traverse_util.flatten_dict(shapes).items():
    shape, name = leaf.shape, key[-1]
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(0, np.sqrt(2 / fan_in), shape)
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      value = rng.normal(0, 0.1, shape)
    flat[key] = np.asarray(value, np.float32)
  return traverse_util.unflatten_dict(flat)


def assert_trees_equal(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=key)


def test_convertible_models_are_the_imagenet_resnets():
  assert set(TORCHVISION_NAMES) <= set(torchvision_models())
  assert "cifar_resnet20" not in torchvision_models()
  assert "plain18" not in torchvision_models()


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
@pytest.mark.slow
def test_round_trip_is_identity(name):
  variables = random_variables(create_model(name))
  state = to_torchvision(variables, name)
  model, back = from_torchvision(state, name)
  assert model.num_classes == 1000
  assert_trees_equal(variables, back)
  again = to_torchvision(back, name)
  assert list(again) == list(state)
  for key in state:
    np.testing.assert_array_equal(again[key], state[key], err_msg=key)


@pytest.mark.parametrize("name,stage_sizes,bottleneck", [
    ("resnet18", (2, 2, 2, 2), False), ("resnet50", (3, 4, 6, 3), True)])
def test_state_dict_has_torchvision_names_and_shapes(name, stage_sizes, bottleneck):
  state = to_torchvision(random_variables(create_model(name)), name)
  # torchvision: the stem conv, 2 or 3 convs per block, a downsample conv in the first block of
  # each stage whose shape changes (all 4 for bottlenecks, stages 2-4 for basic blocks); one BN
  # (weight, bias, running_mean, running_var, num_batches_tracked) per conv; fc weight and bias.
  convs = 1 + (3 if bottleneck else 2) * sum(stage_sizes) + (4 if bottleneck else 3)
  assert len(state) == convs + 5 * convs + 2
  expansion = 4 if bottleneck else 1
  assert state["conv1.weight"].shape == (64, 3, 7, 7)
  assert state["bn1.running_var"].shape == (64,)
  assert state["layer2.0.conv1.weight"].shape == (
      (128, 64 * expansion, 1, 1) if bottleneck else (128, 64, 3, 3))
  assert state["layer2.0.downsample.0.weight"].shape == (128 * expansion, 64 * expansion, 1, 1)
  assert state["layer2.0.downsample.1.running_mean"].shape == (128 * expansion,)
  assert state["fc.weight"].shape == (1000, 512 * expansion)
  assert state["fc.bias"].shape == (1000,)
  assert state["layer4.1.bn2.num_batches_tracked"].dtype == np.int64
  assert state["layer4.1.bn2.num_batches_tracked"].shape == ()
  assert all(v.dtype == np.float32 for k, v in state.items() if "num_batches" not in k)
  assert all(v.flags.writeable and v.flags.c_contiguous for v in state.values())
  assert list(state)[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                             "bn1.running_var", "bn1.num_batches_tracked"]


def test_layouts_are_transposed():
  variables = random_variables(create_model("resnet18"))
  state = to_torchvision(variables, "resnet18")
  kernel = np.asarray(variables["params"]["stage2"]["block1"]["conv1"]["kernel"])  # HWIO
  np.testing.assert_array_equal(state["layer2.0.conv1.weight"][5, 7, 0, 2], kernel[0, 2, 7, 5])
  fc = np.asarray(variables["params"]["fc"]["kernel"])  # (in, out)
  np.testing.assert_array_equal(state["fc.weight"][3, 11], fc[11, 3])
  bn = variables["batch_stats"]["stage3"]["block2"]["bn1"]
  np.testing.assert_array_equal(state["layer3.1.bn1.running_var"], bn["var"])
  np.testing.assert_array_equal(state["layer3.1.bn1.weight"],
                                variables["params"]["stage3"]["block2"]["bn1"]["scale"])


def test_num_classes_follows_the_checkpoint_and_num_batches_tracked_is_optional():
  variables = random_variables(create_model("resnet18", num_classes=10))
  state = to_torchvision(variables, "resnet18")
  assert state["fc.weight"].shape == (10, 512)
  state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  model, back = from_torchvision(state, "resnet18")
  assert model.num_classes == 10
  assert_trees_equal(variables, back)


def test_data_parallel_prefix_is_dropped():
  variables = random_variables(create_model("resnet18"))
  state = {f"module.{k}": v for k, v in to_torchvision(variables, "resnet18").items()}
  assert_trees_equal(variables, from_torchvision(state, "resnet18")[1])


def test_errors_name_the_missing_extra_and_misshaped_keys():
  state = to_torchvision(random_variables(create_model("resnet18")), "resnet18")
  broken = dict(state)
  del broken["layer3.1.bn2.running_mean"]
  broken["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
  broken["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
  with pytest.raises(ValueError) as error:
    from_torchvision(broken, "resnet18")
  message = str(error.value)
  assert "missing: layer3.1.bn2.running_mean" in message
  assert "unexpected: layer5.0.conv1.weight" in message
  assert "layer1.0.conv2.weight is (64, 64, 1, 1), expected (64, 64, 3, 3)" in message
  with pytest.raises(ValueError, match="missing: layer1.0.conv3.weight"):
    from_torchvision(state, "resnet50")  # a ResNet-18 checkpoint for a ResNet-50


def test_to_torchvision_rejects_variables_of_another_model():
  variables = random_variables(create_model("resnet18"))
  with pytest.raises(ValueError, match="missing: params/stage1/block1/conv3/kernel"):
    to_torchvision(variables, "resnet50")
  with pytest.raises(ValueError, match="no params/fc/kernel"):
    to_torchvision({"params": {}}, "resnet18")


def test_models_without_a_torchvision_layout_are_refused():
  with pytest.raises(ValueError, match="no torchvision layout.*resnet50"):
    from_torchvision({}, "cifar_resnet20")
  with pytest.raises(ValueError, match="shortcut 'B'"):
    from_torchvision({}, "resnet18", shortcut="C")
  with pytest.raises(FileNotFoundError, match="no weights file"):
    from_torchvision("/nonexistent/resnet18.safetensors", "resnet18")


def test_safetensors_file_reads_without_torch(tmp_path, monkeypatch):
  from safetensors.numpy import save_file
  variables = random_variables(create_model("resnet34"))
  path = tmp_path / "resnet34.safetensors"
  save_file(to_torchvision(variables, "resnet34"), str(path))
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
  model, back = from_torchvision(path, "resnet34")
  assert_trees_equal(variables, back)
  with pytest.raises(ImportError, match="needs PyTorch"):
    path_pth = tmp_path / "resnet34.pth"
    path_pth.write_bytes(b"PK\x03\x04 a zip archive, as torch.save writes")
    load_state_dict(path_pth)


@pytest.mark.parametrize("name,content", [
    ("resnet18.pth", b"<html>404 Not Found</html>"),
    ("resnet18.safetensors", b"version https://git-lfs.github.com/spec/v1\n"),
    ("resnet18.bin", b""),
])
def test_a_file_that_holds_no_weights_is_named_as_such(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(ValueError, match="is not a weights file"):
    from_torchvision(path, "resnet18")
  from flax_resnet import from_timm
  with pytest.raises(ValueError, match="is not a weights file"):
    from_timm(path, "resnet18d")
  with pytest.raises(FileNotFoundError, match=r"no weights file at .* \(a directory\)"):
    from_torchvision(tmp_path, "resnet18")


def test_pth_file_of_torch_tensors(tmp_path):
  torch = pytest.importorskip("torch")
  variables = random_variables(create_model("resnet18"))
  tensors = {k: torch.from_numpy(v) for k, v in to_torchvision(variables, "resnet18").items()}
  torch.save(tensors, tmp_path / "plain.pth")
  torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "wrapped.pth")
  assert_trees_equal(variables, from_torchvision(tmp_path / "plain.pth", "resnet18")[1])
  assert_trees_equal(variables, from_torchvision(tmp_path / "wrapped.pth", "resnet18")[1])
  assert_trees_equal(variables, from_torchvision(tensors, "resnet18")[1])  # tensors in memory


def torch_reference_logits(state, images_nchw, stage_sizes, bottleneck):
  """torchvision's ResNet forward pass (eval mode) written with torch.nn.functional, straight
  from the state dict: an independent check of names, layouts, padding and strides."""
  import torch
  import torch.nn.functional as F
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}

  def bn(x, name):
    return F.batch_norm(x, t[f"{name}.running_mean"], t[f"{name}.running_var"],
                        t[f"{name}.weight"], t[f"{name}.bias"], training=False, eps=1e-5)

  x = torch.from_numpy(np.asarray(images_nchw))
  x = F.relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1"))
  x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
  for i, num_blocks in enumerate(stage_sizes, start=1):
    for j in range(num_blocks):
      p, stride = f"layer{i}.{j}", (2 if i > 1 and j == 0 else 1)
      if bottleneck:
        y = F.relu(bn(F.conv2d(x, t[f"{p}.conv1.weight"]), f"{p}.bn1"))
        y = F.relu(bn(F.conv2d(y, t[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
        y = bn(F.conv2d(y, t[f"{p}.conv3.weight"]), f"{p}.bn3")
      else:
        y = F.relu(bn(F.conv2d(x, t[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
        y = bn(F.conv2d(y, t[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
      if f"{p}.downsample.0.weight" in t:
        x = bn(F.conv2d(x, t[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
      x = F.relu(y + x)
  return F.linear(x.mean(dim=(2, 3)), t["fc.weight"], t["fc.bias"]).numpy()


def randomize_batch_norm(torch, reference):
  """Moves a PyTorch model's BatchNorm layers away from their identity initialization, so
  that a conversion that mixed up their four arrays would show in the logits."""
  with torch.no_grad():
    for module in reference.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)


def flax_logits(model, variables, images_nchw):
  # Full float32 matmuls and convolutions also on GPUs, whose default may be TF32.
  with jax.default_matmul_precision("highest"):
    return np.asarray(jax.jit(model.apply)(variables, jnp.transpose(images_nchw, (0, 2, 3, 1))))


@pytest.mark.parametrize("name,stage_sizes,bottleneck", [
    ("resnet18", (2, 2, 2, 2), False), ("resnet50", (3, 4, 6, 3), True)])
def test_logits_match_functional_torch_reference(name, stage_sizes, bottleneck):
  pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  state = to_torchvision(random_variables(create_model(name), seed=2), name)
  model, variables = from_torchvision(state, name)
  # Even sizes are where XLA's SAME padding of strided windows is one-sided; odd sizes check the
  # rounding of every strided output size.
  for size in (65, 96):
    images = rng.normal(size=(2, 3, size, size)).astype(np.float32)
    expected = torch_reference_logits(state, images, stage_sizes, bottleneck)
    np.testing.assert_allclose(flax_logits(model, variables, images), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  # The reference tells the paddings apart: 'same' shifts the strided sampling grids.
  same_model, same_variables = from_torchvision(state, name, padding="same")
  difference = np.abs(flax_logits(same_model, same_variables, images) - expected).max()
  assert difference > 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_logits_match_torchvision(name):
  """Needs torch and torchvision: `python -m pytest tests/test_convert.py -k torchvision`."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  reference = getattr(torchvision.models, name)(weights=None).eval()
  randomize_batch_norm(torch, reference)
  model, variables = from_torchvision(reference.state_dict(), name)
  rng = np.random.default_rng(3)
  for size in (224, 97):
    images = rng.normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
      expected = reference(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(flax_logits(model, variables, images), expected,
                               rtol=1e-4, atol=1e-4 * np.abs(expected).max())

  # And back: our variables load into a fresh torchvision model with strict=True.
  fresh = getattr(torchvision.models, name)(weights=None).eval()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in to_torchvision(variables, name).items()},
                        strict=True)
  with torch.no_grad():
    np.testing.assert_allclose(fresh(torch.from_numpy(images)).numpy(), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())
