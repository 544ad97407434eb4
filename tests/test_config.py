"""The config schema and its check: every field defined once, every config file valid, one
message per bad value, and no TensorFlow on the way."""

import os
import subprocess
import sys

import pytest

from configs import default
from flax_resnet.config import FIELDS, check_config, default_config
from flax_resnet.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_and_its_check_import_no_tensorflow():
  """The config check reads the datasets' facts from data/catalog.py, which needs no
  TensorFlow: a notebook can build and check a config before TensorFlow is loaded."""
  code = ("import sys, flax_resnet.config as c; c.check_config(c.default_config()); "
          "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                 env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)


def test_eval_flip_with_ten_crop_is_refused():
  config = default.get_config()
  config.eval_flip, config.imagenet_eval_crop = True, "ten_crop"
  with pytest.raises(ConfigError, match="already include the mirrored ones"):
    check_config(config)


def test_typo_in_config_field_is_named(tmp_path):
  config = default.get_config()
  config.unlock()
  config.weight_decai = 1e-4
  with pytest.raises(ConfigError, match="'weight_decai' \\(did you mean 'weight_decay'\\?\\)"):
    check_config(config)


def test_default_config_sets_every_field():
  assert set(default.get_config().keys()) == FIELDS
  for name in os.listdir(os.path.join(ROOT, "configs")):
    if name.endswith(".py") and name != "__init__.py":
      module = __import__(f"configs.{name[:-3]}", fromlist=["get_config"])
      check_config(module.get_config())
