"""What the tricks after 2016 do to the short quick start, one change at a time.

    python train.py --config=configs/fashion_mnist_tricks.py:ema --workdir=DIR

Each variant is `fashion_mnist_short.py` (cifar_resnet20, batch 128, 5 epochs, cosine
schedule) with one change:

  ema      an exponential moving average of the weights, decay 0.998: it averages over about
           the last 500 steps (an epoch is 468); evaluated beside the raw weights
  mixup    mixup with alpha 0.2 (torchvision's V2 recipe), soft-target loss
  cutmix   CutMix with alpha 1.0 (the same recipe), soft-target loss
  preact   the pre-activation ResNet-20 (He et al., ECCV 2016) instead of the original
"""

from configs import fashion_mnist_short

VARIANTS = ("ema", "mixup", "cutmix", "preact")


def get_config(variant: str = "ema"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}")
  config = fashion_mnist_short.get_config()
  if variant == "ema":
    config.ema_decay = 0.998
  elif variant == "mixup":
    config.mixup_alpha = 0.2
  elif variant == "cutmix":
    config.cutmix_alpha = 1.0
  else:
    config.model = "preact_resnet20"
  return config
