"""The quick start cut to about 13 minutes on 2 CPU cores: 5 epochs, flips without crops.

    python train.py --config=configs/fashion_mnist_short.py --workdir=workdirs/fashion_mnist_short

Five epochs are too few for the 4-pixel random crops to pay off: the network still underfits
them when the cosine schedule ends. Flips alone keep some augmentation at no cost.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.num_epochs = 5
  config.crop_padding = 0
  config.weight_decay = 1e-4            # as measured (README); the full config's 5e-4 and
  config.label_smoothing = 0.0          # smoothing 0.1 are untried in five epochs
  config.random_erasing = 0.0           # as measured; erasing is untried in five epochs
  return config
