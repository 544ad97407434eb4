"""flax-resnet: the ResNets of He et al. (CVPR 2016) in JAX/Flax, with their training recipes.

    from flax_resnet import create_model, summary
    model = create_model('resnet50')
    print(summary(model))
"""

from flax_resnet.models import (
    BasicBlock,
    BottleneckBlock,
    PlainBasicBlock,
    PlainBottleneckBlock,
    ResNet,
    Shortcut,
    Stage,
    Stem,
)
from flax_resnet.preact import PreActBasicBlock, PreActBottleneckBlock
from flax_resnet.stochastic_depth import DropPath
from flax_resnet.named_models import (
    create_model,
    model_names,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNet200,
    Plain18,
    Plain34,
    CifarResNet20,
    CifarResNet32,
    CifarResNet44,
    CifarResNet56,
    CifarResNet110,
    CifarResNet1202,
    CifarPlain20,
    CifarPlain32,
    CifarPlain44,
    CifarPlain56,
    CifarPlain110,
)
from flax_resnet.counting import count_macs, count_params, summary

__version__ = "0.1.0"

# Imported on first use, so that `import flax_resnet` stays light (no orbax, no TensorFlow).
_LAZY = {
    "train_and_evaluate": "flax_resnet.loop",
    "default_config": "flax_resnet.config",
    "check_config": "flax_resnet.config",
    "from_torchvision": "flax_resnet.convert",
    "to_torchvision": "flax_resnet.convert",
    "load_state_dict": "flax_resnet.convert",
    "torchvision_models": "flax_resnet.convert",
    "from_timm": "flax_resnet.convert_timm",
    "to_timm": "flax_resnet.convert_timm",
    "timm_models": "flax_resnet.convert_timm",
    "load": "flax_resnet.workdir",
    "predict": "flax_resnet.inference",
    "preprocess": "flax_resnet.inference",
    "load_image": "flax_resnet.inference",
    "replace_head": "flax_resnet.inference",
    "top_k": "flax_resnet.inference",
    "Prediction": "flax_resnet.inference",
    "IMAGENET_MEAN": "flax_resnet.data.statistics",
    "IMAGENET_STD": "flax_resnet.data.statistics",
    "IMAGENET_CLASSES": "flax_resnet.imagenet_classes",
    "IMAGENET_SYNSETS": "flax_resnet.imagenet_classes",
}


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'flax_resnet' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
