"""The named networks: `create_model('resnet50')`, `model_names()` and their constructors.

Each name is a set of `models.ResNet` fields (MODEL_SPECS); `create_model` takes any field as
an override. The training config's `model` field takes the same names.

  resnet18 ... resnet200, plain18/34      the paper's ImageNet nets (torchvision's layout)
  cifar_resnet20 ... 1202, cifar_plain*   the paper's CIFAR-10 nets (6n+2 layers)
  resnet18d ... resnet200d                ResNet-D of "Bag of Tricks" (timm's resnet*d): deep
                                          stem, average-pooled projection shortcuts
  preact_resnet18 ... preact_resnet200    pre-activation ImageNet nets (timm's resnetv2_*)
  preact_resnet20 ... 110, 164, 1001      pre-activation CIFAR-10 nets; 164 and 1001 are the
                                          "Identity Mappings" paper's bottleneck nets (9n+2)
"""

from __future__ import annotations

from typing import Any

from flax_resnet import model_checks
from flax_resnet.models import BasicBlock, BottleneckBlock, PlainBasicBlock, ResNet
from flax_resnet.preact import PreActBasicBlock, PreActBottleneckBlock

_IMAGENET = dict(stem="imagenet", widths=(64, 128, 256, 512), num_classes=1000, shortcut="B")
# CIFAR nets (paper section 4.2): 6n+2 layers, 16/32/64 filters, option A shortcuts.
_CIFAR = dict(stem="cifar", widths=(16, 32, 64), num_classes=10, shortcut="A")

# name -> (default keyword arguments of ResNet)
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "resnet18": dict(_IMAGENET, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock),
    "resnet34": dict(_IMAGENET, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock),
    "resnet50": dict(_IMAGENET, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock),
    "resnet101": dict(_IMAGENET, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckBlock),
    "resnet152": dict(_IMAGENET, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckBlock),
    "resnet200": dict(_IMAGENET, stage_sizes=(3, 24, 36, 3), block_cls=BottleneckBlock),
    "plain18": dict(_IMAGENET, stage_sizes=(2, 2, 2, 2), block_cls=PlainBasicBlock),
    "plain34": dict(_IMAGENET, stage_sizes=(3, 4, 6, 3), block_cls=PlainBasicBlock),
}
for _n in (3, 5, 7, 9, 18, 200):
  MODEL_SPECS[f"cifar_resnet{6 * _n + 2}"] = dict(_CIFAR, stage_sizes=(_n,) * 3,
                                                   block_cls=BasicBlock)
for _n in (3, 5, 7, 9, 18):
  MODEL_SPECS[f"cifar_plain{6 * _n + 2}"] = dict(_CIFAR, stage_sizes=(_n,) * 3,
                                                  block_cls=PlainBasicBlock)

_IMAGENET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                    152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
# ResNet-D (He et al. 2019): ResNet-C's deep stem and average-pooled projections.
for _depth, _sizes in _IMAGENET_DEPTHS.items():
  MODEL_SPECS[f"resnet{_depth}d"] = dict(
      _IMAGENET, stage_sizes=_sizes, stem="deep", shortcut_downsample="avg_pool",
      block_cls=BottleneckBlock if _depth >= 50 else BasicBlock)
for _depth, _sizes in _IMAGENET_DEPTHS.items():
  MODEL_SPECS[f"preact_resnet{_depth}"] = dict(
      _IMAGENET, stage_sizes=_sizes,
      block_cls=PreActBottleneckBlock if _depth >= 50 else PreActBasicBlock)
for _n in (3, 5, 7, 9, 18):
  MODEL_SPECS[f"preact_resnet{6 * _n + 2}"] = dict(_CIFAR, stage_sizes=(_n,) * 3,
                                                    block_cls=PreActBasicBlock)
# The "Identity Mappings" paper's CIFAR bottleneck nets: 9n+2 layers, projection shortcuts
# where shapes change (its code's), 16/32/64 filters expanded x4.
for _n in (18, 111):
  MODEL_SPECS[f"preact_resnet{9 * _n + 2}"] = dict(_CIFAR, stage_sizes=(_n,) * 3,
                                                    shortcut="B", block_cls=PreActBottleneckBlock)


def model_names() -> list[str]:
  """Every name `create_model` accepts."""
  return list(MODEL_SPECS)


def create_model(name: str, **overrides) -> ResNet:
  """The network called `name` (see `model_names()`), with any ResNet field overridden.

  >>> model = create_model('resnet50', num_classes=10, dtype=jnp.bfloat16)
  """
  try:
    spec = MODEL_SPECS[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_SPECS)}") from None
  fields = set(ResNet.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown ResNet field(s) {unknown} for model {name!r}; "
                     f"valid fields: {sorted(fields)}")
  model = ResNet(**{**spec, **overrides})
  model_checks.check_fields(model)  # a value out of range fails here, not at its first call
  return model


def _constructor(name: str):
  def make(**overrides) -> ResNet:
    return create_model(name, **overrides)
  make.__name__ = make.__qualname__ = name.replace("resnet", "ResNet").replace(
      "plain", "Plain").replace("cifar_", "Cifar")
  make.__doc__ = f"create_model({name!r}, **overrides): {MODEL_SPECS[name]['stage_sizes']} blocks."
  return make


ResNet18, ResNet34, ResNet50, ResNet101, ResNet152, ResNet200 = (
    _constructor(f"resnet{d}") for d in (18, 34, 50, 101, 152, 200))
Plain18, Plain34 = (_constructor(f"plain{d}") for d in (18, 34))
(CifarResNet20, CifarResNet32, CifarResNet44, CifarResNet56, CifarResNet110,
 CifarResNet1202) = (_constructor(f"cifar_resnet{d}") for d in (20, 32, 44, 56, 110, 1202))
CifarPlain20, CifarPlain32, CifarPlain44, CifarPlain56, CifarPlain110 = (
    _constructor(f"cifar_plain{d}") for d in (20, 32, 44, 56, 110))
