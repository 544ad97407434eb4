"""Shared defaults of every experiment: the paper's ImageNet recipe for ResNet-50.

The fields, their defaults and their allowed values are defined once, in
`flax_resnet.config` (`flax_resnet.default_config()`); every config file starts from them and
changes only what makes its experiment special. Any field can be overridden on the command
line: `--config.batch_size=1024`.
"""

import ml_collections

from flax_resnet.config import default_config


def get_config() -> ml_collections.ConfigDict:
  return default_config()
