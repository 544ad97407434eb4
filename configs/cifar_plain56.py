"""CIFAR-10 plain-56 (no shortcuts), the paper's recipe (configs/cifar10.py)."""

from configs import cifar10


def get_config():
  return cifar10.get_config("cifar_plain56")
