"""Shared defaults of every experiment: the paper's ImageNet recipe for ResNet-50.

Every other config file starts from this one and changes only what differs, so that a
config file reads as the list of what makes its experiment special. Any field can be
overridden on the command line: `--config.batch_size=1024`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Model: a name of flax_resnet.create_model and ResNet field overrides.
  config.model = "resnet50"
  config.widths = ()                    # base width of each stage; (): the model's own
  config.shortcut = "B"
  config.stride_in_1x1 = False          # True: the paper's v1 bottleneck; False: v1.5
  config.zero_init_residual = False
  config.num_classes = 0                # 0: the dataset's number of classes
  # Compile the repeated blocks of each stage once (nn.scan): ResNet-152's first step comes
  # 2x sooner on the CPU, but steps run 6-19% slower there and 33% slower on an H100
  # (benchmarks/README.md), so it is for quick starts of deep nets. Checkpoints hold the
  # unrolled layout either way: a run may resume with the other setting.
  config.scan_blocks = False

  # Data (flax_resnet.input_pipeline).
  config.dataset = "imagenet2012"
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.image_size = 224
  config.imagenet_train_augmentation = "paper"   # 'paper' (scale aug. [256, 480]) | 'inception'
  config.imagenet_eval_crop = "center"           # 'center' (256 -> 224) | 'ten_crop'
  config.image_resize_antialias = False          # True: PIL/torchvision-like, ~2x slower
  config.image_folder_check = "auto"             # image_folder: 'auto' | 'full' | 'header' | 'lazy'
  # CIFAR-10, Fashion-MNIST: zero padding before the random crop (None: the paper's 4 pixels;
  # 0: flips only, for runs too short to profit from crops).
  config.crop_padding = ml_collections.FieldReference(None, field_type=int)
  # Random erasing (Zhong et al. 2020): probability per training image of one noise rectangle.
  config.random_erasing = 0.0
  # Score each eval image and its horizontal mirror by their mean logits (for ImageNet,
  # imagenet_eval_crop='ten_crop' includes the mirrors). Off: the paper's CIFAR figures are
  # single-view.
  config.eval_flip = False
  config.cifar_validation_split = False          # True: train on 45k, evaluate on held-out 5k
  # > 0: evaluate on only this many examples of the eval split (its first ones; an image
  # folder's spread over its classes), for quick looks at long runs. 0: the whole split.
  config.eval_examples = 0
  config.fashion_mnist_source_dir = "/usr/share/datasets/fashion-mnist"
  config.shuffle_buffer_size = 16_384
  config.prefetch = 2
  config.cache = False

  # Optimization: SGD with momentum, L2 weight decay, the paper's step schedule.
  config.batch_size = 256               # global, over all devices of all hosts
  config.eval_batch_size = 0            # 0: batch_size
  config.num_epochs = 90
  config.num_train_steps = 0            # > 0 wins over num_epochs
  config.learning_rate = 0.1            # at lr_reference_batch_size examples per step
  config.lr_reference_batch_size = 256  # lr = learning_rate * batch_size / this (0: no scaling)
  config.lr_schedule = "step"           # 'step' | 'cosine' | 'constant'
  config.lr_decay_epochs = (30, 60)     # 'step': divide the lr by 10 at these epochs ...
  config.lr_decay_steps = ()            # ... or at these steps, if given
  config.lr_decay_factor = 0.1
  config.warmup_epochs = 0.0
  config.warmup_steps = 0               # > 0 wins over warmup_epochs
  config.warmup_mode = "linear"         # 'linear' from 0, or 'constant' at warmup_factor * lr
  config.warmup_factor = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.weight_decay_on = "kernels"    # 'kernels' (conv and dense) | 'all' parameters
  config.label_smoothing = 0.0
  config.half_precision = False         # bfloat16 compute (float16 on GPU if half_precision_dtype)
  config.half_precision_dtype = "bfloat16"  # 'bfloat16' | 'float16' (dynamic loss scaling)

  # Parallelism: the per-device step is mapped with jax.shard_map, or jax.pmap.
  config.parallelism = "shard_map"      # 'shard_map' | 'pmap'

  # Bookkeeping.
  config.seed = 0
  config.log_every_steps = 100
  config.eval_every_steps = 0           # 0: once per epoch
  config.checkpoint_every_steps = 0     # 0: once per epoch
  config.keep_checkpoints = 3
  config.plot = True                    # training curves as WORKDIR/curves.png at the end
  return config
