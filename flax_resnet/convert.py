"""Weights between PyTorch's ResNets and ours, in both directions: torchvision's here, timm's
in convert_timm.py, on the same helpers (`TorchNaming`, `state_dict_to_variables`,
`variables_to_state_dict`, `load_state_dict`).

torchvision's ResNet-18/34/50/101/152 (v1.5, as its IMAGENET1K_V1/V2 weights; timm's ResNets use
the same names) map one to one onto `create_model`'s networks of the same name:

    conv1, bn1                         <-> stem/conv, stem/bn
    layer{i}.{j-1}.conv{k}, .bn{k}     <-> stage{i}/block{j}/conv{k}, bn{k}
    layer{i}.{j-1}.downsample.0, .1    <-> stage{i}/block{j}/shortcut/conv, shortcut/bn
    fc                                 <-> fc

Conv kernels go from torch's OIHW to Flax's HWIO, the classifier's (out, in) to (in, out), and
BatchNorm's weight/bias/running_mean/running_var to scale/bias/mean/var (epsilon 1e-5 in both).
With the default 'symmetric' padding our stem, strided 3x3 convolutions and max-pool sample
exactly the pixels torchvision's do, so the converted network computes the same function.
Reading a .safetensors file needs no PyTorch; a .pth file does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from flax_resnet.array_fit import misfit
from flax_resnet.models import BasicBlock, BottleneckBlock, ResNet
from flax_resnet.named_models import MODEL_SPECS, create_model

# Our leaf name -> PyTorch's.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_LEAF_ORDER = ("kernel", "scale", "bias", "mean", "var")
ModulePath = tuple[str, ...]  # our module path, e.g. ('stage2', 'block1', 'shortcut', 'conv')


@dataclasses.dataclass(frozen=True)
class TorchNaming:
  """How a PyTorch library names the modules of one family of our networks.

  module: (our module path, the model) -> its module name ('layer2.0.downsample.0').
  layer_order: our layer names in the order the library's state dict holds them, within the
    stem, a block and a shortcut (state dicts list modules as their __init__ creates them).
  classifier: the classifier's module name; classifier_is_conv: it is a 1x1 convolution
    (timm's resnetv2), with weights of shape (out, in, 1, 1) instead of a Linear's (out, in).
  """

  library: str
  module: Callable[[ModulePath, ResNet], str]
  layer_order: tuple[str, ...] = ("conv", "bn", "conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                  "shortcut")
  classifier: str = "fc"
  classifier_is_conv: bool = False


def torchvision_models() -> list[str]:
  """The `create_model` names whose weights torchvision's (and timm's) layout holds."""
  return [name for name, spec in MODEL_SPECS.items()
          if spec["stem"] == "imagenet" and spec["block_cls"] in (BasicBlock, BottleneckBlock)
          and spec.get("shortcut_downsample", "stride") == "stride"]


def torchvision_module(path: ModulePath, model: ResNet | None = None) -> str:
  """Our module path ('stage2', 'block1', 'shortcut', 'conv') -> 'layer2.0.downsample.0'."""
  if path[0] == "stem":
    return {"conv": "conv1", "bn": "bn1"}[path[1]]
  if path[0] == "fc":
    return "fc"
  stage, block, *rest = path
  prefix = f"layer{int(stage[len('stage'):])}.{int(block[len('block'):]) - 1}"
  if rest[0] == "shortcut":
    return f"{prefix}.downsample.{0 if rest[1] == 'conv' else 1}"
  return f"{prefix}.{rest[0]}"


TORCHVISION = TorchNaming("torchvision", torchvision_module)


def _kind(path: ModulePath) -> str:
  if path[0] == "fc":
    return "dense"
  return "norm" if "bn" in path[-1] else "conv"  # bn, bn1, ..., final_bn


def _to_torch_layout(kind: str, array: np.ndarray) -> np.ndarray:
  if kind == "conv" and array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
  if kind == "dense" and array.ndim == 2:
    return np.transpose(array)  # (in, out) -> (out, in)
  if kind == "conv_classifier" and array.ndim == 2:
    return np.transpose(array)[:, :, None, None]  # (in, out) -> (out, in, 1, 1)
  return array


def _to_flax_layout(kind: str, array: np.ndarray) -> np.ndarray:
  if kind == "conv" and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
  if kind == "dense" and array.ndim == 2:
    return np.transpose(array)
  if kind == "conv_classifier" and array.ndim == 4:
    return np.transpose(array[:, :, 0, 0])
  return array


def _state_dict_order(path: ModulePath, layer_order: tuple[str, ...]):
  """Sort key putting our module paths in a state dict's order: stem, stages (numerically),
  the final BN of pre-activation nets, the classifier; within each, `layer_order`."""
  top = {"stem": 0, "final_bn": 2, "fc": 3}
  if path[0] in top:
    head, rest = (top[path[0]],), path[1:]
  else:
    head, rest = (1, int(path[0][len("stage"):]), int(path[1][len("block"):])), path[2:]
  return head + tuple(layer_order.index(p) for p in rest)


def _layout(model: ResNet, naming: TorchNaming
            ) -> dict[str, tuple[tuple[str, ...], str, tuple[int, ...]] | None]:
  """PyTorch key -> (our flattened variable key, layer kind, PyTorch's shape), in the
  library's state-dict order; each BatchNorm's num_batches_tracked maps to None."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
  modules = {}  # module path -> [(flattened key, shape)]
  for key, leaf in flax.traverse_util.flatten_dict(shapes).items():
    modules.setdefault(key[1:-1], []).append((key, leaf.shape))
  layout = {}
  for path in sorted(modules, key=lambda path: _state_dict_order(path, naming.layer_order)):
    module, kind = naming.module(path, model), _kind(path)
    if kind == "dense" and naming.classifier_is_conv:
      kind = "conv_classifier"
    for key, shape in sorted(modules[path], key=lambda entry: _LEAF_ORDER.index(entry[0][-1])):
      torch_shape = _to_torch_layout(kind, np.empty(shape, np.uint8)).shape
      layout[f"{module}.{_TORCH_LEAF[key[-1]]}"] = (key, kind, torch_shape)
    if kind == "norm":
      layout[f"{module}.num_batches_tracked"] = None
  return layout


def _display(value) -> str:
  return repr(getattr(value, "__name__", value))


def _checked_model(library: str, name: str, model_name: str, **overrides) -> ResNet:
  """create_model(model_name, **overrides), refused where an override changes the layers
  that the library's `name` has (its stem, shortcuts or blocks)."""
  model = create_model(model_name, **overrides)
  spec = MODEL_SPECS[model_name]
  for field in ("stem", "shortcut", "shortcut_downsample", "block_cls"):
    expected = spec.get(field, ResNet.__dataclass_fields__[field].default)
    actual = getattr(model, field)
    if actual != expected:
      raise ValueError(f"{library}'s {name} uses {field} {_display(expected)}; got "
                       f"{field}={_display(actual)}")
  return model


def _convertible_model(model_name: str, **overrides) -> ResNet:
  if model_name not in torchvision_models():
    raise ValueError(f"model {model_name!r} has no torchvision layout; convert one of "
                     f"{', '.join(torchvision_models())}")
  return _checked_model("torchvision", model_name, model_name, **overrides)


def _refuse_misfit(what: str, problems: str) -> None:
  """One ValueError naming every missing, unexpected and mis-shaped key, where there are any."""
  if problems:
    raise ValueError(f"{what}: {problems}")


def _to_numpy(value) -> np.ndarray:
  """A numpy array from a numpy/jax array or a torch tensor (without importing torch)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # bfloat16/float16 checkpoints; numpy has no bfloat16
    return value.numpy()
  return np.asarray(value)


def _weights_format(path: str) -> str | None:
  """'safetensors' or 'torch' by a file's first bytes, whatever its name; None for anything
  else. safetensors: an 8-byte little-endian header length, then the JSON header's '{'.
  torch.save: a zip archive (PK), or the legacy format, a pickle (protocol byte 0x80)."""
  with open(path, "rb") as f:
    head = f.read(9)
  if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= (
      os.path.getsize(path) - 8):
    return "safetensors"
  if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
    return "torch"
  return None


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A torchvision state dict from a .safetensors file (no torch needed) or a torch.save file
  (.pth/.pt/.bin/.ckpt: needs torch; a {'state_dict': ...} or {'model': ...} wrapper is opened),
  told apart by their first bytes; any other file is a ValueError that says so."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weights file at {path!r}" +
                            (" (a directory)" if os.path.isdir(path) else ""))
  kind = _weights_format(path)
  if kind is None:
    raise ValueError(f"{path!r} is not a weights file: neither .safetensors nor a torch.save "
                     "archive (.pth/.pt/.bin/.ckpt)")
  if kind == "safetensors":
    from safetensors.numpy import load_file
    return load_file(path)
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading {path!r} needs PyTorch (pip install torch); or save the state "
                      "dict as .safetensors, which reads without it") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model"):
    if isinstance(state.get(wrapper), Mapping):
      state = state[wrapper]
  return {k: _to_numpy(v) for k, v in state.items()}


def state_dict_to_variables(state_dict: Mapping[str, Any] | str | os.PathLike,
                            naming: TorchNaming, name: str,
                            make_model: Callable[..., ResNet], **overrides
                            ) -> tuple[ResNet, dict]:
  """(model, variables) from a PyTorch state dict (a mapping or a file, see `load_state_dict`)
  of the library's network `name`: `make_model(**overrides)` builds our model, num_classes
  following the classifier unless overridden; a 'module.' prefix (DistributedDataParallel)
  is dropped; every key and shape is checked."""
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = load_state_dict(state_dict)
  if not isinstance(state_dict, Mapping):
    raise TypeError(f"state_dict must be a mapping of {naming.library} names to arrays or a "
                    f"path, not {type(state_dict).__name__}")
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
  state = {k: _to_numpy(v) for k, v in state_dict.items()}
  classifier = f"{naming.classifier}.weight"
  if classifier in state and "num_classes" not in overrides:
    overrides["num_classes"] = int(state[classifier].shape[0])
  model = make_model(**overrides)
  layout = _layout(model, naming)
  entries = {k: v for k, v in layout.items() if v is not None}
  _refuse_misfit(f"state dict does not fit {naming.library}'s {name} "
                 f"(num_classes={model.num_classes})",
                 misfit({k: v.shape for k, v in state.items()},
                        {k: shape for k, (_, _, shape) in entries.items()},
                        ignored={k for k, v in layout.items() if v is None}))
  flat = {key: jnp.asarray(_to_flax_layout(kind, state[key_name]), jnp.float32)
          for key_name, (key, kind, _) in entries.items()}
  return model, flax.traverse_util.unflatten_dict(flat)


def variables_to_state_dict(variables: Mapping, naming: TorchNaming, name: str,
                            make_model: Callable[..., ResNet]) -> dict[str, np.ndarray]:
  """The library's state dict (float32 numpy arrays, int64 num_batches_tracked) of the
  variables of `make_model(num_classes=...)`, in the library's key order; every key and shape
  is checked."""
  flat = flax.traverse_util.flatten_dict(dict(variables))
  if ("params", "fc", "kernel") not in flat:
    raise ValueError("variables have no params/fc/kernel; pass the full {'params': ..., "
                     "'batch_stats': ...} of a ResNet")
  model = make_model(num_classes=int(flat["params", "fc", "kernel"].shape[1]))
  layout = _layout(model, naming)
  entries = {k: v for k, v in layout.items() if v is not None}
  expected = {"/".join(key): _to_flax_layout(kind, np.empty(shape, np.uint8)).shape
              for key, kind, shape in entries.values()}
  _refuse_misfit(f"variables do not fit {name} (num_classes={model.num_classes})",
                 misfit({"/".join(k): np.shape(v) for k, v in flat.items()}, expected))
  state = {}
  for key_name, entry in layout.items():
    if entry is None:
      state[key_name] = np.array(0, np.int64)
    else:
      key, kind, _ = entry
      # A writable C-order copy: torch.from_numpy shares (and may write) its memory.
      state[key_name] = np.array(_to_torch_layout(kind, np.asarray(flat[key], np.float32)),
                                 np.float32, order="C")
  return state


def from_torchvision(state_dict: Mapping[str, Any] | str | os.PathLike, model_name: str,
                     **overrides) -> tuple[ResNet, dict]:
  """(model, variables) for `create_model(model_name, **overrides)` holding torchvision's weights.

  `state_dict` maps torchvision's parameter and buffer names to numpy arrays or torch tensors
  (what `torchvision.models.resnet50().state_dict()` or `torch.load` gives), or is a path to a
  .safetensors or .pth file. num_classes follows fc.weight unless overridden, so fine-tuned
  checkpoints load too; a 'module.' prefix (DistributedDataParallel) is dropped.

  >>> model, variables = from_torchvision('resnet50.safetensors', 'resnet50')
  >>> logits = model.apply(variables, images_nhwc)
  """
  return state_dict_to_variables(
      state_dict, TORCHVISION, model_name,
      lambda **kw: _convertible_model(model_name, **kw), **overrides)


def to_torchvision(variables: Mapping, model_name: str, **overrides) -> dict[str, np.ndarray]:
  """torchvision's state dict (float32 numpy arrays, int64 num_batches_tracked) of `variables`
  of `create_model(model_name, **overrides)` (e.g. other widths), for
  `torchvision.models.<model_name>().load_state_dict(..., strict=True)` (wrap each value in
  torch.from_numpy) or safetensors.numpy.save_file."""
  return variables_to_state_dict(variables, TORCHVISION, model_name,
                                 lambda **kw: _convertible_model(model_name, **overrides, **kw))
