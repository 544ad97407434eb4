"""The networks of `flax_resnet.create_model` in PyTorch, the torchvision layout plus the
paper's CIFAR option A (no torchvision needed): the reference of benchmarks/step_speed.py."""

from __future__ import annotations


def torch_resnet(name: str, widths: tuple[int, ...] = ()):
  """The network `name` of flax_resnet.create_model, in PyTorch (train mode, NCHW)."""
  import torch
  import torch.nn.functional as F
  from torch import nn as tnn

  from flax_resnet.models import BottleneckBlock, PlainBasicBlock, PlainBottleneckBlock
  from flax_resnet.named_models import MODEL_SPECS
  spec = MODEL_SPECS[name]
  if getattr(spec["block_cls"], "preactivation", False) or spec["stem"] == "deep":
    raise SystemExit(f"the PyTorch reference builds the 2016 paper's nets only, not {name}")
  bottleneck = issubclass(spec["block_cls"], BottleneckBlock)
  residual = spec["block_cls"] not in (PlainBasicBlock, PlainBottleneckBlock)
  expansion = 4 if bottleneck else 1
  option = spec["shortcut"]

  class Shortcut(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.stride, self.extra = stride, cout - cin
      changes = stride != 1 or cin != cout
      self.project = option == "C" or (option == "B" and changes)
      self.pad = option == "A" and changes
      if self.project:
        self.conv = tnn.Conv2d(cin, cout, 1, stride, bias=False)
        self.bn = tnn.BatchNorm2d(cout)

    def forward(self, x):
      if self.project:
        return self.bn(self.conv(x))
      if self.pad:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
      return x

  class Basic(tnn.Module):
    def __init__(self, cin, width, stride):
      super().__init__()
      self.conv1 = tnn.Conv2d(cin, width, 3, stride, 1, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      self.conv2 = tnn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(width)
      self.shortcut = Shortcut(cin, width, stride) if residual else None

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return F.relu(y + self.shortcut(x) if residual else y)

  class Bottleneck(tnn.Module):
    def __init__(self, cin, width, stride):
      super().__init__()
      s1, s3 = (stride, 1) if spec.get("stride_in_1x1") else (1, stride)
      self.conv1 = tnn.Conv2d(cin, width, 1, s1, bias=False)
      self.bn1 = tnn.BatchNorm2d(width)
      self.conv2 = tnn.Conv2d(width, width, 3, s3, 1, bias=False)
      self.bn2 = tnn.BatchNorm2d(width)
      self.conv3 = tnn.Conv2d(width, width * 4, 1, bias=False)
      self.bn3 = tnn.BatchNorm2d(width * 4)
      self.shortcut = Shortcut(cin, width * 4, stride) if residual else None

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = F.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return F.relu(y + self.shortcut(x) if residual else y)

  block = Bottleneck if bottleneck else Basic
  widths = widths or spec["widths"]
  if spec["stem"] == "imagenet":
    layers = [tnn.Conv2d(3, widths[0], 7, 2, 3, bias=False), tnn.BatchNorm2d(widths[0]),
              tnn.ReLU(inplace=True), tnn.MaxPool2d(3, 2, 1)]
  else:
    layers = [tnn.Conv2d(3, widths[0], 3, 1, 1, bias=False), tnn.BatchNorm2d(widths[0]),
              tnn.ReLU(inplace=True)]
  cin = widths[0]
  for i, (blocks, width) in enumerate(zip(spec["stage_sizes"], widths)):
    for j in range(blocks):
      layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
      cin = width * expansion
  layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, spec["num_classes"])]
  net = tnn.Sequential(*layers)
  for m in net.modules():
    if isinstance(m, tnn.Conv2d):
      tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
  return net.train(), torch
