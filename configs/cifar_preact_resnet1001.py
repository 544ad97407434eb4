"""Pre-activation ResNet-1001 on CIFAR-10 ("Identity Mappings", He et al. 2016): the CIFAR
recipe of configs/cifar10.py with its lr-0.01 warm-up, and projection shortcuts (option B)
where shapes change, as the paper's bottleneck nets use."""

from configs import cifar10


def get_config():
  return cifar10.with_warmup(cifar10.get_config("preact_resnet1001"))  # option B: the model's own
