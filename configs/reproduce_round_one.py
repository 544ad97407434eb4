"""Round one of the reproduction (reproduce/README.md, "Round one"): the studies of
configs/reproduce.py under round one's recipe, which departed from the paper in three ways:
the ImageNet-style nets trained at lr 0.1 per 128 images (the paper's CIFAR rate, twice its
ImageNet rate), weight decay applied to convolution and classifier kernels only, and the
depth study ran 6 epochs. Its classifier also started from Flax's Dense default (lecun-normal
kernel, zero bias), which no config field sets: the library now starts it as torchvision does,
and reproduce/first_steps.py redraws round one's to replay its first steps.

    python train.py --config=configs/reproduce_round_one.py:resnet18_A --workdir=DIR
"""

from configs import reproduce

DEPTH_EPOCHS = 6
RUNS = reproduce.NETS


def get_config(run: str = "cifar_resnet20"):
  if run not in RUNS:
    raise ValueError(f"unknown run {run!r}; round one's runs are {', '.join(RUNS)}")
  config = reproduce.get_config(run)
  config.lr_reference_batch_size = 128
  config.weight_decay_on = "kernels"
  if run in reproduce.DEPTH_NETS:
    reproduce.set_epochs(config, DEPTH_EPOCHS)
  return config
