"""The paper's CIFAR-10 recipe (section 4.2), shared by the cifar_* configs.

Batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k, weight decay 1e-4,
momentum 0.9, option A shortcuts; 4-pixel pad + random 32 crop + flip. Used directly it
trains ResNet-20: `--config=configs/cifar10.py`. TFDS downloads CIFAR-10 on first use.
"""

from flax_resnet.config import default_config


def get_config(model: str = "cifar_resnet20"):
  config = default_config()
  config.model = model
  config.dataset = "cifar10"
  config.cache = True                   # 150 MB of pixels: decode once, shuffle exactly
  config.batch_size = 128
  config.learning_rate = 0.1
  config.lr_reference_batch_size = 128
  config.lr_decay_steps = (32_000, 48_000)
  config.num_train_steps = 64_000
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config


def with_warmup(config):
  """ResNet-110 and deeper: lr 0.01 until training error is below 80% (about 400 iterations)."""
  config.warmup_steps = 400
  config.warmup_mode = "constant"
  config.warmup_factor = 0.1
  return config
