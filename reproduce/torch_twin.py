"""PyTorch twins of our basic-block networks, to check our training step for step.

`TorchResNet.like(model)` builds, from one of our basic-block networks (`create_model(...)`:
the paper's ImageNet nets with option A, B or C, the plain nets, the CIFAR nets), a PyTorch
module with the same layers under the same names (stem.conv, stage2.block1.shortcut.bn, fc,
...), so `load_variables` copies our variables into it one for one and `variables` reads them
back. The blocks follow the paper, as ours do: BN after every convolution, ReLU after the
addition; option A subsamples by the stride and zero-pads the new channels.

`paper_sgd(module, lr)` is the paper's optimizer as torch.optim.SGD (momentum 0.9, weight decay
1e-4 on every parameter) and `torch_step` one training step of a module (BatchNorm in
training mode, cross-entropy), which tests/test_against_pytorch.py and
reproduce/first_steps.py compare with ours. Needs torch (no torchvision).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn


class Shortcut(nn.Module):
  def __init__(self, in_features: int, features: int, stride: int, option: str):
    super().__init__()
    self.stride, self.extra = stride, features - in_features
    self.project = option == "C" or (option == "B" and (stride != 1 or self.extra))
    self.option_a = option == "A" and (stride != 1 or self.extra)
    if self.project:
      self.conv = nn.Conv2d(in_features, features, 1, stride, bias=False)
      self.bn = nn.BatchNorm2d(features)

  def forward(self, x):
    if self.project:
      return self.bn(self.conv(x))
    if self.option_a:
      return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
    return x


class BasicBlock(nn.Module):
  def __init__(self, in_features: int, features: int, stride: int, option: str,
               residual: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(in_features, features, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.shortcut = Shortcut(in_features, features, stride, option) if residual else None
    self.relu = nn.ReLU()

  def forward(self, x):
    y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
    return self.relu(y if self.shortcut is None else y + self.shortcut(x))


class Stem(nn.Module):
  def __init__(self, features: int, kind: str, in_channels: int):
    super().__init__()
    self.kind = kind
    self.conv = (nn.Conv2d(in_channels, features, 7, 2, 3, bias=False) if kind == "imagenet"
                 else nn.Conv2d(in_channels, features, 3, 1, 1, bias=False))
    self.bn = nn.BatchNorm2d(features)
    self.relu = nn.ReLU()

  def forward(self, x):
    x = self.relu(self.bn(self.conv(x)))
    return F.max_pool2d(x, 3, 2, 1) if self.kind == "imagenet" else x


class TorchResNet(nn.Module):
  """A basic-block ResNet or plain net laid out as flax_resnet.models.ResNet."""

  def __init__(self, stage_sizes, widths, stem: str, option: str, residual: bool,
               num_classes: int, in_channels: int = 3):
    super().__init__()
    self.stem = Stem(widths[0], stem, in_channels)
    in_features = widths[0]
    for i, (blocks, width) in enumerate(zip(stage_sizes, widths)):
      stage = nn.Sequential()
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        stage.add_module(f"block{j + 1}",
                         BasicBlock(in_features, width, stride, option, residual))
        in_features = width
      self.add_module(f"stage{i + 1}", stage)
    self.num_stages = len(stage_sizes)
    self.fc = nn.Linear(in_features, num_classes)

  @classmethod
  def like(cls, model, in_channels: int = 3) -> "TorchResNet":
    """The twin of `model`, a flax_resnet basic-block network (stem 'imagenet' or 'cifar')
    taking images of `in_channels` channels."""
    if model.stem not in ("imagenet", "cifar") or "Basic" not in model.block_cls.__name__:
      raise ValueError("twins exist for the basic-block nets with the imagenet or cifar stem")
    return cls(model.stage_sizes, model.widths, model.stem, model.shortcut,
               model.block_cls.residual, model.num_classes, in_channels)

  def forward(self, x):
    x = self.stem(x)
    for i in range(self.num_stages):
      x = getattr(self, f"stage{i + 1}")(x)
    return self.fc(x.mean(dim=(2, 3)))


_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _torch_name(path: tuple[str, ...]) -> str:
  *module, leaf = path
  if leaf == "kernel":
    leaf = "weight"
  elif module[-1] != "fc":
    leaf = _BN_NAMES[leaf]
  return ".".join([*module, leaf])


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel":  # HWIO -> OIHW; Dense (in, out) -> Linear (out, in)
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def load_variables(module: TorchResNet, variables) -> None:
  """Copies our {'params', 'batch_stats'} into `module`, every tensor of it exactly once."""
  state = module.state_dict()
  loaded = set()
  for collection in ("params", "batch_stats"):
    for path, value in traverse_util.flatten_dict(variables[collection]).items():
      name = _torch_name(path)
      tensor = torch.from_numpy(np.array(_to_torch_layout(path[-1],
                                                                       np.asarray(value))))
      if state[name].shape != tensor.shape:
        raise ValueError(f"{name}: ours {tuple(tensor.shape)}, torch {tuple(state[name].shape)}")
      state[name] = tensor.to(state[name].dtype)
      loaded.add(name)
  missing = {k for k in state if not k.endswith("num_batches_tracked")} - loaded
  if missing:
    raise ValueError(f"not in our variables: {sorted(missing)}")
  module.load_state_dict(state)


def variables(module: nn.Module, like) -> dict:
  """`module`'s tensors, in float64, as our variables in the structure of `like` (ours).
  `module` is a twin, or a torchvision ResNet (its names are translated)."""
  state = {twin_name(k): v for k, v in module.state_dict().items()}
  out = {}
  for collection in ("params", "batch_stats"):
    flat = {}
    for path in traverse_util.flatten_dict(like[collection]):
      value = state[_torch_name(path)].detach().double().numpy()
      flat[path] = _from_torch_layout(path[-1], value)
    out[collection] = traverse_util.unflatten_dict(flat)
  return out


def twin_name(name: str) -> str:
  """The twin's name of a torchvision ResNet's tensor (a twin's name stays as it is):
  conv1 -> stem.conv, layer2.0.downsample.1 -> stage2.block1.shortcut.bn."""
  parts = name.split(".")
  if parts[0] in ("conv1", "bn1"):
    return ".".join(["stem", parts[0][:-1], *parts[1:]])
  if parts[0].startswith("layer"):
    rest = parts[2:]
    if rest[0] == "downsample":
      rest = ["shortcut", {"0": "conv", "1": "bn"}[rest[1]], *rest[2:]]
    return ".".join([f"stage{parts[0][5:]}", f"block{int(parts[1]) + 1}", *rest])
  return name


@contextlib.contextmanager
def relu_margin(module: nn.Module):
  """Yields a list that receives, per forward pass of `module` inside the block, the
  smallest |input| of any of its nn.ReLU modules: how close the pass came to a ReLU's kink,
  where float rounding can decide which side an input falls on and so its gradient."""
  margins, current = [], []

  def record(_, inputs):
    current.append(float(inputs[0].detach().abs().min()))

  def collect(*_):
    margins.append(min(current))
    current.clear()

  hooks = [m.register_forward_pre_hook(record) for m in module.modules()
           if isinstance(m, nn.ReLU)]
  hooks.append(module.register_forward_hook(collect))
  try:
    yield margins
  finally:
    for hook in hooks:
      hook.remove()


def paper_sgd(module: nn.Module, lr: float, momentum: float = 0.9,
              weight_decay: float = 1e-4, decay: str = "all") -> torch.optim.SGD:
  """The paper's optimizer: SGD with momentum, weight decay on every parameter, or with
  `decay='kernels'` on the conv and linear weights only (flax_resnet.optim's 'kernels')."""
  if decay == "all":
    return torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)
  kernels = [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
  others = [p for p in module.parameters() if all(p is not k for k in kernels)]
  return torch.optim.SGD([{"params": kernels, "weight_decay": weight_decay},
                          {"params": others, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def torch_step(module: nn.Module, optimizer: torch.optim.Optimizer, images: np.ndarray,
               labels: np.ndarray, lr: float | None = None) -> float:
  """One training step on NHWC `images` (BatchNorm in training mode, mean cross-entropy);
  `lr`, if given, is this step's learning rate. Returns the loss before the step."""
  module.train()
  if lr is not None:
    for group in optimizer.param_groups:
      group["lr"] = lr
  dtype = next(module.parameters()).dtype
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dtype)
  loss = F.cross_entropy(module(x), torch.from_numpy(np.asarray(labels, np.int64)))
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  return float(loss.detach())
