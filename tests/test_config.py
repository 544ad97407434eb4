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


def test_model_dependent_fields_default_to_the_models_own():
  """default_config() with a CIFAR net trains the paper's option A shortcuts (no projection
  parameters), with an ImageNet net option B; a field set in the config wins."""
  import jax
  import jax.numpy as jnp
  from flax_resnet.config import model_fields
  from flax_resnet.loop import build_model

  config = default_config()
  config.model = "cifar_resnet20"
  check_config(config)
  assert "shortcut" not in model_fields(config) and "widths" not in model_fields(config)
  model = build_model(config, num_classes=10)
  assert model.shortcut == "A" and tuple(model.widths) == (16, 32, 64)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  assert not any("shortcut" in block for stage in params.values() if isinstance(stage, dict)
                 for block in stage.values() if isinstance(block, dict))
  assert build_model(default_config(), num_classes=1000).shortcut == "B"  # resnet50's own
  config.shortcut = "B"
  assert build_model(config, num_classes=10).shortcut == "B"


def test_no_config_file_repeats_a_models_own_shortcut():
  for name in os.listdir(os.path.join(ROOT, "configs")):
    if name.endswith(".py") and name not in ("__init__.py", "reproduce.py"):
      module = __import__(f"configs.{name[:-3]}", fromlist=["get_config"])
      assert module.get_config().shortcut == "", name


@pytest.mark.parametrize("field,value,message", [
    ("learning_rate", float("inf"), "learning_rate must be a finite number, not inf"),
    ("weight_decay", float("nan"), "weight_decay must be a finite number, not nan"),
    ("warmup_epochs", float("inf"), "warmup_epochs must be a finite number"),
    ("lr_decay_epochs", (30, float("inf")), "lr_decay_epochs must be a finite number"),
    ("image_size", 100_000, r"image_size must be a number of pixels in \[0, 4096\]"),
    ("learning_rate", 1000.0, r"learning_rate must be in \(0, 100\], not 1000.0"),
    ("weight_decay", 1.0, r"weight_decay must be in \[0, 1\), not 1.0"),
    ("data_dir", "", "config.data_dir is empty"),
    ("fashion_mnist_source_dir", " ", "config.fashion_mnist_source_dir is empty"),
])
def test_absurd_values_are_refused(field, value, message):
  config = default_config()
  config[field] = value
  with pytest.raises(ConfigError, match=message):
    check_config(config)
