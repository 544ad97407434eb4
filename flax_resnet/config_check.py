"""Checks a config before anything is built, so a mistake costs one message, not a traceback."""

from __future__ import annotations

import difflib

from flax_resnet.models import MODEL_SPECS, SHORTCUT_OPTIONS, model_names

# Every field the training loop reads; configs/default.py sets each one (a test checks that).
FIELDS = frozenset("""
model widths shortcut stride_in_1x1 zero_init_residual num_classes scan_blocks
dataset data_dir image_size imagenet_train_augmentation imagenet_eval_crop image_resize_antialias
image_folder_check crop_padding random_erasing eval_flip
cifar_validation_split eval_examples fashion_mnist_source_dir shuffle_buffer_size prefetch cache
batch_size eval_batch_size num_epochs num_train_steps learning_rate lr_reference_batch_size
lr_schedule lr_decay_epochs lr_decay_steps lr_decay_factor warmup_epochs warmup_steps
warmup_mode warmup_factor momentum nesterov weight_decay weight_decay_on label_smoothing
half_precision half_precision_dtype parallelism
seed log_every_steps eval_every_steps checkpoint_every_steps keep_checkpoints plot
""".split())

CHOICES = {
    "shortcut": SHORTCUT_OPTIONS,
    "imagenet_train_augmentation": ("paper", "inception"),
    "imagenet_eval_crop": ("center", "ten_crop"),
    "image_folder_check": ("auto", "full", "header", "lazy"),
    "lr_schedule": ("step", "cosine", "constant"),
    "warmup_mode": ("linear", "constant"),
    "weight_decay_on": ("kernels", "all"),
    "half_precision_dtype": ("bfloat16", "float16"),
    "parallelism": ("shard_map", "pmap"),
}


class ConfigError(ValueError):
  """A config that cannot run; the message names the field and the fix."""


def check_config(config) -> None:
  """Raises ConfigError for unknown or missing fields, unknown names and impossible values."""
  keys = set(config.keys())
  unknown = sorted(keys - FIELDS)
  if unknown:
    hints = []
    for key in unknown:
      close = difflib.get_close_matches(key, FIELDS, n=1)
      hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"unknown config field {', '.join(hints)}; the fields are listed in "
                      "configs/default.py")
  missing = sorted(FIELDS - keys)
  if missing:
    raise ConfigError(f"config lacks field(s) {missing}; start from configs/default.py "
                      "(`config = default.get_config()`) and override what differs")
  if config.model not in model_names():
    raise ConfigError(f"unknown model {config.model!r}; valid models: "
                      f"{', '.join(model_names())}")
  stages = len(MODEL_SPECS[config.model]["stage_sizes"])
  if config.widths and (len(config.widths) != stages
                        or not all(isinstance(w, int) and w > 0 for w in config.widths)):
    raise ConfigError(f"config.widths={tuple(config.widths)} must be {stages} positive integers "
                      f"(one per stage of {config.model}), or () for the model's own "
                      f"{MODEL_SPECS[config.model]['widths']}")
  from flax_resnet import input_pipeline  # imports TensorFlow: only when training
  if config.dataset not in input_pipeline.DATASETS:
    raise ConfigError(f"unknown dataset {config.dataset!r}; valid datasets: "
                      f"{', '.join(input_pipeline.DATASETS)}")
  for field, choices in CHOICES.items():
    if config[field] not in choices:
      raise ConfigError(f"config.{field}={config[field]!r} is not one of {choices}")
  for field in ("batch_size", "log_every_steps", "keep_checkpoints"):
    if config[field] <= 0:
      raise ConfigError(f"config.{field} must be positive, not {config[field]}")
  if config.eval_examples < 0:
    raise ConfigError(f"config.eval_examples must be >= 0 (0: the whole eval split), not "
                      f"{config.eval_examples}")
  if config.crop_padding is not None and config.crop_padding < 0:
    raise ConfigError(f"config.crop_padding must be >= 0 (or None for the dataset's default), "
                      f"not {config.crop_padding}")
  if not 0 <= config.random_erasing <= 1:
    raise ConfigError(f"config.random_erasing is a probability per image, in [0, 1], not "
                      f"{config.random_erasing}")
  if (config.eval_flip and config.imagenet_eval_crop == "ten_crop"
      and config.dataset in ("imagenet2012", "image_folder")):
    raise ConfigError("config.eval_flip and config.imagenet_eval_crop='ten_crop' do not combine: "
                      "the ten crops already include the mirrored ones; set one of them")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set config.num_epochs or config.num_train_steps to a positive number")
