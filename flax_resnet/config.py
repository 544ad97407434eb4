"""The one config schema: every field, its default and its allowed values, defined here once.

`default_config()` is the paper's ImageNet recipe for ResNet-50. Experiment files in
`configs/` start from it and change what differs; in a notebook:

    config = flax_resnet.default_config()
    config.model, config.dataset = "cifar_resnet20", "fashion_mnist"
    flax_resnet.train_and_evaluate(config, "workdirs/mine")

`check_config` refuses a config that cannot run, with one message naming the field, before
anything is built or written. The modules that read a config read its fields directly,
without defaults of their own.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from flax_resnet import model_checks, named_models, parallel, stochastic_depth
from flax_resnet.data.catalog import DATASETS, DEBIAN_FASHION_MNIST_DIR
from flax_resnet.errors import ConfigError

# Allowed values of the fields that take a name. Model and dataset names are the keys of
# named_models.MODEL_SPECS and data.catalog.DATASETS; the options a module owns are its own.
CHOICES = {
    "shortcut": ("",) + model_checks.SHORTCUT_OPTIONS,  # "": the model's own
    "imagenet_train_augmentation": ("paper", "inception"),
    "imagenet_eval_crop": ("center", "ten_crop"),
    "image_folder_check": ("auto", "full", "header", "lazy"),
    "optimizer": ("sgd", "lars"),
    "lr_schedule": ("step", "cosine", "polynomial", "constant"),
    "warmup_mode": ("linear", "constant"),
    "weight_decay_on": ("kernels", "all"),
    "half_precision_dtype": ("bfloat16", "float16"),
    "parallelism": parallel.MODES,
    "trainable": ("all", "head"),
}


def default_config() -> ml_collections.ConfigDict:
  """Every field the library reads, at its default: the paper's ImageNet recipe."""
  config = ml_collections.ConfigDict()

  # Model: a name of flax_resnet.create_model and ResNet field overrides; the fields whose
  # right value depends on the model default to the model's own (`model_fields`).
  config.model = "resnet50"
  config.widths = ()                    # base width of each stage; (): the model's own
  # The paper's options A, B, C (models.Shortcut); "": the model's own (A for the CIFAR nets,
  # B for the ImageNet nets).
  config.shortcut = ""
  config.stride_in_1x1 = False          # True: the paper's v1 bottleneck; False: v1.5
  config.zero_init_residual = False
  config.num_classes = 0                # 0: the dataset's number of classes
  # Compile the repeated blocks of each stage once (nn.scan): a sooner first step for deep
  # nets, slower steps after (benchmarks/README.md). Checkpoints hold the unrolled layout
  # either way, so a run may resume with the other setting.
  config.scan_blocks = False

  # Fine-tuning (flax_resnet/init_from.py): a run that starts afresh takes its weights and
  # BatchNorm statistics from init_from: a torchvision or timm weights file (.safetensors,
  # .pth) of config.model, or the work directory of another run of this library (its
  # checkpoint of init_from_step; 0: its newest). The classifier is kept where the number of
  # classes is the same, and new (the model's own initialization) where it differs. A
  # resumed run continues from its own checkpoint and does not read init_from.
  config.init_from = ""                 # "": the model's own random initialization
  config.init_from_step = 0
  # Which parameters train: 'all', or 'head' (a linear probe: the classifier only; the rest
  # gets no update nor weight decay, and its BatchNorm runs on, and keeps, its running
  # statistics). backbone_lr_scale: with 'all', everything but the classifier learns at this
  # multiple of the learning rate.
  config.trainable = "all"
  config.backbone_lr_scale = 1.0

  # Data (flax_resnet.data).
  config.dataset = "imagenet2012"       # imagenet2012 | cifar10 | fashion_mnist | image_folder
  config.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS's default
  config.image_size = 0                 # 0: the dataset's own (ImageNet, image folders: 224)
  config.imagenet_train_augmentation = "paper"   # scale augmentation [256, 480] | 'inception'
  config.imagenet_eval_crop = "center"           # 'center' (256 -> 224) | 'ten_crop'
  config.image_resize_antialias = False          # PIL/torchvision-like resizing, slower
  config.image_folder_check = "auto"             # how image_folder files are checked first
  # CIFAR-10, Fashion-MNIST: zero padding before the random crop (None: the paper's 4
  # pixels; 0: flips only).
  config.crop_padding = ml_collections.FieldReference(None, field_type=int)
  config.random_erasing = 0.0           # probability per training image (Zhong et al. 2020)
  # Score each eval image and its mirror by their mean logits (ImageNet's 'ten_crop'
  # includes the mirrors already).
  config.eval_flip = False
  config.cifar_validation_split = False  # True: train on 45k, evaluate on the held-out 5k
  config.eval_examples = 0              # > 0: evaluate on this many eval examples only
  config.fashion_mnist_source_dir = DEBIAN_FASHION_MNIST_DIR  # IDX files to prepare from
  config.shuffle_buffer_size = 16_384   # streamed (not cached) datasets
  config.prefetch = 2                   # batches prepared ahead
  config.cache = False                  # hold the decoded training split in host memory

  # Optimization: SGD with momentum, L2 weight decay, the paper's step schedule.
  config.optimizer = "sgd"              # 'sgd' | 'lars' (large batches, You et al. 2017)
  # LARS: each kernel's update is scaled by trust_coefficient * |w| / |g + wd w| (optax.lars);
  # biases and BatchNorm parameters get neither that ratio nor weight decay (MLPerf's LARS).
  config.lars_trust_coefficient = 0.001
  config.batch_size = 256               # global, over all devices of all hosts
  # Split each step's batch into this many micro-batches, run one after the other, and apply
  # the mean of their gradients in one update: batch_size examples per step in the memory of
  # batch_size / grad_accum_steps. BatchNorm normalizes each micro-batch with its own
  # statistics (and updates its running averages once per micro-batch), so a model with
  # BatchNorm trains like one with a smaller BN batch, not exactly like the whole batch.
  config.grad_accum_steps = 1
  config.eval_batch_size = 0            # 0: batch_size
  config.num_epochs = 90
  config.num_train_steps = 0            # > 0 wins over num_epochs
  config.learning_rate = 0.1            # at lr_reference_batch_size examples per step
  config.lr_reference_batch_size = 256  # lr = learning_rate * batch_size / this (0: no scaling)
  config.lr_schedule = "step"
  config.lr_decay_epochs = (30, 60)     # 'step': divide the lr by 10 at these epochs ...
  config.lr_decay_steps = ()            # ... or at these steps, if given
  config.lr_decay_factor = 0.1
  # 'polynomial' (MLPerf's LARS): lr decays from its peak to lr_end as (1 - t/T)^lr_power
  # over the steps after the warm-up.
  config.lr_power = 2.0
  config.lr_end = 0.0
  config.warmup_epochs = 0.0
  config.warmup_steps = 0               # > 0 wins over warmup_epochs
  config.warmup_mode = "linear"         # from 0, or 'constant' at warmup_factor * lr
  config.warmup_factor = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.weight_decay_on = "kernels"    # conv and dense kernels | 'all' parameters
  config.label_smoothing = 0.0
  # The tricks of modern recipes, all off by default (flax_resnet/mixing.py, step.py).
  config.drop_path_rate = 0.0           # stochastic depth: the last block's drop rate
  config.ema_decay = 0.0                # > 0: keep and evaluate an EMA of the weights
  config.mixup_alpha = 0.0              # > 0: mixup, lambda ~ Beta(alpha, alpha) per batch
  config.cutmix_alpha = 0.0             # > 0: CutMix, lambda ~ Beta(alpha, alpha) per batch
  config.mixup_switch_prob = 0.5        # both on: the probability of CutMix for a batch
  config.half_precision = False         # compute in half_precision_dtype, parameters float32
  config.half_precision_dtype = "bfloat16"  # 'float16' adds dynamic loss scaling

  # Parallelism: the per-device step is mapped with jax.shard_map, or jax.pmap.
  config.parallelism = "shard_map"

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_steps = 0           # 0: once per epoch
  config.checkpoint_every_steps = 0     # 0: once per epoch
  config.keep_checkpoints = 3
  config.plot = True                    # training curves as WORKDIR/curves.png at the end
  return config


FIELDS = frozenset(default_config().keys())


def model_fields(config) -> dict:
  """The ResNet fields `config` sets for `create_model(config.model, ...)`: widths and
  shortcut only where they are not the model's own (() and "")."""
  fields = {"stride_in_1x1": config.stride_in_1x1,
            "zero_init_residual": config.zero_init_residual,
            "drop_path_rate": config.drop_path_rate, "scan_blocks": config.scan_blocks}
  if config.widths:
    fields["widths"] = tuple(config.widths)
  if config.shortcut:
    fields["shortcut"] = config.shortcut
  return fields

# The largest image side a run takes: beyond it a single image fills gigabytes.
MAX_IMAGE_SIZE = 4096

# Numeric fields and the values they take: (test, what the value must be). Every number of
# the config must also be finite (`_non_finite`).
_RANGES = {
    "batch_size": (lambda v: v > 0, "positive"),
    "eval_batch_size": (lambda v: v >= 0, ">= 0 (0: batch_size)"),
    "image_size": (lambda v: 0 <= v <= MAX_IMAGE_SIZE,
                   f"a number of pixels in [0, {MAX_IMAGE_SIZE}] (0: the dataset's own)"),
    "num_classes": (lambda v: v >= 0, ">= 0 (0: the dataset's)"),
    "num_epochs": (lambda v: v >= 0, ">= 0"),
    "num_train_steps": (lambda v: v >= 0, ">= 0 (0: num_epochs decides)"),
    # LARS's peak at batch 32k is about 30; a thousand times the paper's 0.1 is a typo.
    "learning_rate": (lambda v: 0 < v <= 100, "in (0, 100]"),
    "lr_reference_batch_size": (lambda v: v >= 0, ">= 0 (0: no scaling)"),
    "lr_decay_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr_power": (lambda v: v > 0, "positive"),
    "lr_end": (lambda v: v >= 0, ">= 0"),
    "lars_trust_coefficient": (lambda v: v > 0, "positive"),
    "grad_accum_steps": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "warmup_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    # The paper's is 1e-4; a penalty of 1 or more outweighs any classification loss.
    "weight_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "drop_path_rate": stochastic_depth.RATE_RANGE,
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0: no EMA)"),
    "mixup_alpha": (lambda v: v >= 0, ">= 0 (0: no mixup)"),
    "cutmix_alpha": (lambda v: v >= 0, ">= 0 (0: no CutMix)"),
    "mixup_switch_prob": (lambda v: 0 <= v <= 1, "a probability, in [0, 1]"),
    "random_erasing": (lambda v: 0 <= v <= 1, "a probability per image, in [0, 1]"),
    "crop_padding": (lambda v: v is None or v >= 0, ">= 0 (or None for the dataset's own)"),
    "eval_examples": (lambda v: v >= 0, ">= 0 (0: the whole eval split)"),
    "shuffle_buffer_size": (lambda v: v > 0, "positive"),
    "prefetch": (lambda v: v >= 0, ">= 0"),
    "seed": (lambda v: v >= 0, ">= 0"),
    "log_every_steps": (lambda v: v > 0, "positive"),
    "eval_every_steps": (lambda v: v >= 0, ">= 0 (0: once per epoch)"),
    "checkpoint_every_steps": (lambda v: v >= 0, ">= 0 (0: once per epoch)"),
    "keep_checkpoints": (lambda v: v > 0, "positive"),
    "init_from_step": (lambda v: v >= 0, ">= 0 (0: the newest checkpoint)"),
    "backbone_lr_scale": (lambda v: v > 0, "positive (1: the learning rate of the head)"),
}


def _non_finite(value) -> bool:
  """NaN or an infinity, alone or in a tuple or list (lr_decay_epochs)."""
  if isinstance(value, (tuple, list)):
    return any(_non_finite(v) for v in value)
  return isinstance(value, float) and not math.isfinite(value)


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
                      "flax_resnet/config.py")
  missing = sorted(FIELDS - keys)
  if missing:
    raise ConfigError(f"config lacks field(s) {missing}; start from "
                      "flax_resnet.default_config() and override what differs")
  if config.model not in named_models.MODEL_SPECS:
    raise ConfigError(f"unknown model {config.model!r}; valid models: "
                      f"{', '.join(named_models.MODEL_SPECS)}")
  stages = len(named_models.MODEL_SPECS[config.model]["stage_sizes"])
  if config.widths and (len(config.widths) != stages
                        or not all(isinstance(w, int) and w > 0 for w in config.widths)):
    raise ConfigError(f"config.widths={tuple(config.widths)} must be {stages} positive integers "
                      f"(one per stage of {config.model}), or () for the model's own "
                      f"{named_models.MODEL_SPECS[config.model]['widths']}")
  if config.dataset not in DATASETS:
    raise ConfigError(f"unknown dataset {config.dataset!r}; valid datasets: "
                      f"{', '.join(DATASETS)}")
  for field, choices in CHOICES.items():
    if config[field] not in choices:
      raise ConfigError(f"config.{field}={config[field]!r} is not one of {choices}")
  for field in ("data_dir", "fashion_mnist_source_dir"):  # e.g. --config.data_dir=$UNSET
    if isinstance(config[field], str) and not config[field].strip():
      raise ConfigError(f"config.{field} is empty (an unset shell variable?); name a folder"
                        + (", or None for TFDS's default" if field == "data_dir" else ""))
  for field in sorted(FIELDS):
    if _non_finite(config[field]):
      raise ConfigError(f"config.{field} must be a finite number, not {config[field]!r}")
  for field, (ok, what) in _RANGES.items():
    if not ok(config[field]):
      raise ConfigError(f"config.{field} must be {what}, not {config[field]!r}")
  if (config.eval_flip and config.imagenet_eval_crop == "ten_crop"
      and config.dataset in ("imagenet2012", "image_folder")):
    raise ConfigError("config.eval_flip and config.imagenet_eval_crop='ten_crop' do not combine: "
                      "the ten crops already include the mirrored ones; set one of them")
  if config.drop_path_rate and not named_models.MODEL_SPECS[config.model]["block_cls"].residual:
    raise ConfigError(f"config.drop_path_rate drops residual branches; {config.model} has no "
                      "shortcuts: set it to 0 or choose a residual model")
  if config.lr_schedule == "polynomial" and config.lr_end >= config.learning_rate * (
      config.batch_size / config.lr_reference_batch_size if config.lr_reference_batch_size
      else 1):
    raise ConfigError(f"config.lr_end={config.lr_end} must be below the peak learning rate "
                      "of the 'polynomial' schedule")
  if config.grad_accum_steps > 1 and config.half_precision and (
      config.half_precision_dtype == "float16"):
    raise ConfigError("config.grad_accum_steps > 1 does not combine with float16's dynamic "
                      "loss scaling; use half_precision_dtype='bfloat16' or grad_accum_steps=1")
  if config.trainable == "head" and config.backbone_lr_scale != 1:
    raise ConfigError("config.backbone_lr_scale applies to trainable='all'; with 'head' the "
                      "backbone does not train: leave backbone_lr_scale at 1")
  if config.init_from_step and not config.init_from:
    raise ConfigError("config.init_from_step selects a checkpoint of config.init_from, "
                      "which is empty; name the work directory to start from")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set config.num_epochs or config.num_train_steps to a positive number")
