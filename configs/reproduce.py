"""The paper's Section 4 studies on Fashion-MNIST, one shared recipe per study.

    python train.py --config=configs/reproduce.py:cifar_plain56 --workdir=DIR/cifar_plain56
    python reproduce/run.py --workdir=DIR      # every run, resumable, then the report

Depth study (the paper's Figure 6 and CIFAR table): `cifar_plain{20,32,44,56,110}` and
`cifar_resnet{20,32,44,56,110}` on the 28x28 images, the paper's CIFAR recipe (batch 128,
lr 0.1, momentum 0.9, weight decay 1e-4, option A shortcuts, 4-pixel pad + crop + flip) cut
to DEPTH_EPOCHS epochs with the lr divided by 10 at 50% and 75% of the steps, the same steps
for every depth. The 110-layer nets use the paper's lr-0.01 warm-up (400 steps).

ImageNet-style study (Table 2, Figure 4, Table 3): `plain18`, `plain34`, `resnet18_A`,
`resnet34_A`, `resnet34_B`, `resnet34_C` (name: model and shortcut option), the same recipe
for IMAGENET_STYLE_EPOCHS epochs on the images resized to IMAGENET_STYLE_SIZE: the ImageNet
stem downsamples by 4, so 56x56 inputs give the four stages 14, 7, 4 and 2 pixel maps, where
28x28 would leave the last stage 1x1.
"""

from flax_resnet.config import default_config

DEPTH_EPOCHS = 6
IMAGENET_STYLE_EPOCHS = 3
IMAGENET_STYLE_SIZE = 56

DEPTH_RUNS = tuple(f"cifar_{kind}{depth}" for kind in ("plain", "resnet")
                   for depth in (20, 32, 44, 56, 110))
IMAGENET_STYLE_RUNS = ("plain18", "plain34", "resnet18_A", "resnet34_A", "resnet34_B",
                       "resnet34_C")
RUNS = DEPTH_RUNS + IMAGENET_STYLE_RUNS


def get_config(run: str = "cifar_resnet20"):
  if run not in RUNS:
    raise ValueError(f"unknown run {run!r}; the runs are {', '.join(RUNS)}")
  config = default_config()
  model, _, shortcut = run.partition("_") if not run.startswith("cifar_") else (run, "", "")
  config.model = model
  config.shortcut = shortcut  # "": the model's own (A for the CIFAR nets, B for ImageNet's)
  config.dataset = "fashion_mnist"
  config.cache = True
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  config.lr_reference_batch_size = 128
  config.lr_decay_epochs = (0.5 * _epochs(run), 0.75 * _epochs(run))
  config.num_epochs = _epochs(run)
  config.log_every_steps = 25
  if run in IMAGENET_STYLE_RUNS:
    config.image_size = IMAGENET_STYLE_SIZE
  if run.endswith("110"):  # the paper's warm-up for its 110-layer nets
    config.warmup_steps = 400
    config.warmup_mode = "constant"
  return config


def _epochs(run: str) -> int:
  return IMAGENET_STYLE_EPOCHS if run in IMAGENET_STYLE_RUNS else DEPTH_EPOCHS
