"""Weights between timm's ResNets (timm 1.0's names) and ours, in both directions.

    timm                          create_model
    resnet18 ... resnet200        resnet18 ... resnet200        (torchvision's names)
    resnet18d ... resnet200d      resnet18d ... resnet200d      (ResNet-D)
    resnetv2_18 ... resnetv2_152  preact_resnet18 ... 152       (BatchNorm pre-activation)

timm's resnet* name their modules as torchvision does (convert.py). In the 'd' variants the
deep stem is conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv) followed by bn1, and a
projection shortcut is downsample = Sequential(AvgPool2d or Identity, conv, bn):

    conv1.0, conv1.1, conv1.3, conv1.4, conv1.6, bn1 <-> stem/conv1, bn1, conv2, bn2, conv3, bn3
    layer{i}.{j-1}.downsample.1, .2                   <-> stage{i}/block{j}/shortcut/conv, bn

timm's resnetv2 (pre-activation blocks, BatchNormAct2d, bias-free convolutions):

    stem.conv                                   <-> stem/conv
    stages.{i-1}.blocks.{j-1}.norm{k}, conv{k}  <-> stage{i}/block{j}/bn{k}, conv{k}
    stages.{i-1}.blocks.{j-1}.downsample.conv   <-> stage{i}/block{j}/shortcut/conv
    norm                                        <-> final_bn
    head.fc (a 1x1 convolution with bias)       <-> fc

Layouts, key checks and file reading are convert.py's; a .safetensors file needs no PyTorch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from flax_resnet.convert import (TorchNaming, _checked_model, state_dict_to_variables,
                                 torchvision_module, variables_to_state_dict)
from flax_resnet.models import ResNet

_DEPTHS = (18, 34, 50, 101, 152, 200)
# timm name -> create_model name (timm 1.0.31 has no resnetv2_200)
TIMM_MODELS = {
    **{f"resnet{d}": f"resnet{d}" for d in _DEPTHS},
    **{f"resnet{d}d": f"resnet{d}d" for d in _DEPTHS},
    **{f"resnetv2_{d}": f"preact_resnet{d}" for d in _DEPTHS[:-1]},
}

_DEEP_STEM = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4",
              "conv3": "conv1.6", "bn3": "bn1"}


def _resnet_module(path: tuple[str, ...], model: ResNet) -> str:
  """torchvision's names, with the 'd' variants' deep stem and pooled downsample."""
  if path[0] == "stem" and model.stem == "deep":
    return _DEEP_STEM[path[1]]
  name = torchvision_module(path)
  if path[2:3] == ("shortcut",) and model.shortcut_downsample == "avg_pool":
    index = int(name[-1]) + 1  # downsample.0 is the pool (no weights)
    return f"{name[:-1]}{index}"
  return name


def _resnetv2_module(path: tuple[str, ...], model: ResNet) -> str:
  if path[0] == "stem":
    return f"stem.{path[1]}"
  if path[0] == "final_bn":
    return "norm"
  if path[0] == "fc":
    return "head.fc"
  stage, block, *rest = path
  prefix = f"stages.{int(stage[len('stage'):]) - 1}.blocks.{int(block[len('block'):]) - 1}"
  if rest[0] == "shortcut":
    return f"{prefix}.downsample.conv"
  return f"{prefix}.{rest[0].replace('bn', 'norm')}"


RESNET = TorchNaming("timm", _resnet_module)
# A pre-activation block creates its downsample first, then norm1, conv1, norm2, ...
RESNETV2 = TorchNaming("timm", _resnetv2_module,
                       layer_order=("conv", "shortcut", "bn1", "conv1", "bn2", "conv2", "bn3",
                                    "conv3"),
                       classifier="head.fc", classifier_is_conv=True)


def timm_models() -> list[str]:
  """The timm model names `from_timm` and `to_timm` convert."""
  return list(TIMM_MODELS)


def _naming_and_model(timm_name: str):
  if timm_name not in TIMM_MODELS:
    raise ValueError(f"no conversion for timm's {timm_name!r}; convert one of "
                     f"{', '.join(TIMM_MODELS)}")
  naming = RESNETV2 if timm_name.startswith("resnetv2_") else RESNET
  return naming, lambda **overrides: _checked_model("timm", timm_name, TIMM_MODELS[timm_name],
                                                    **overrides)


def from_timm(state_dict: Mapping[str, Any] | str | os.PathLike, timm_name: str,
              **overrides) -> tuple[ResNet, dict]:
  """(model, variables) holding the weights of timm's `timm_name` (see `timm_models()`): the
  model is `create_model(TIMM_MODELS[timm_name], **overrides)`.

  `state_dict` maps timm's names to numpy arrays or torch tensors
  (`timm.create_model('resnet50d').state_dict()`), or is a path to a .safetensors file (no
  torch needed; timm's hub weights come as model.safetensors) or a .pth file. num_classes
  follows the classifier unless overridden.

  >>> model, variables = from_timm('model.safetensors', 'resnetv2_50')
  """
  naming, make_model = _naming_and_model(timm_name)
  return state_dict_to_variables(state_dict, naming, timm_name, make_model, **overrides)


def to_timm(variables: Mapping, timm_name: str) -> dict[str, np.ndarray]:
  """timm's state dict (float32 numpy arrays, int64 num_batches_tracked) of `variables` of
  `create_model(TIMM_MODELS[timm_name])`, for `timm.create_model(timm_name).load_state_dict(
  ..., strict=True)` (wrap each value in torch.from_numpy) or safetensors.numpy.save_file."""
  naming, make_model = _naming_and_model(timm_name)
  return variables_to_state_dict(variables, naming, timm_name, make_model)
