"""ResNet-34 on ImageNet, the paper's recipe: SGD 0.9, wd 1e-4, lr 0.1 x batch/256, /10 at epochs 30 and 60 of 90."""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "resnet34"
  return config
