"""CIFAR-10 ResNet-1202, the paper's recipe (configs/cifar10.py)."""

from configs import cifar10


def get_config():
  return cifar10.with_warmup(cifar10.get_config("cifar_resnet1202"))
