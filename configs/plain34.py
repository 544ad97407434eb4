"""Plain-34 (no shortcuts) on ImageNet, the paper's recipe: the degradation-problem baseline."""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "plain34"
  return config
