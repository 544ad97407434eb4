"""The quick start: a CIFAR-style ResNet-20 on the real Fashion-MNIST, on a laptop CPU.

    python train.py --config=configs/fashion_mnist.py --workdir=workdirs/fashion_mnist

Data: Debian's dataset-fashion-mnist files (or TFDS's download where there is a network),
prepared once into a TFDS dataset; 28x28x1 images, 4-pixel pad + random crop + flip.
The paper's CIFAR recipe (SGD 0.9, batch 128, option A shortcuts) with a cosine schedule,
weight decay 5e-4, label smoothing 0.1 and random erasing 0.5 over 60 epochs, each test image
scored with its mirror. The README's results table gives its accuracy and time.
"""

from flax_resnet.config import default_config


def get_config():
  config = default_config()
  config.model = "cifar_resnet20"
  config.dataset = "fashion_mnist"
  config.cache = True                   # 47 MB of pixels: decode once, shuffle exactly
  config.random_erasing = 0.5
  config.eval_flip = True               # score each test image with its mirror
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  config.lr_reference_batch_size = 128
  config.num_epochs = 60
  config.lr_schedule = "cosine"
  config.warmup_epochs = 0.2
  config.weight_decay = 5e-4
  config.label_smoothing = 0.1
  config.log_every_steps = 50
  return config
