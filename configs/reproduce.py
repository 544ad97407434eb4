"""The paper's Section 4 studies on Fashion-MNIST, with the paper's recipe, one per study.

    python train.py --config=configs/reproduce.py:cifar_plain56 --workdir=DIR/cifar_plain56
    python reproduce/run.py --workdir=DIR      # every run, resumable, then the report

Depth study (the paper's Figure 6 and CIFAR table): `cifar_plain{20,32,44,56,110}` and
`cifar_resnet{20,32,44,56,110}` on the 28x28 images, the paper's CIFAR recipe (batch 128,
lr 0.1, momentum 0.9, weight decay 1e-4 on every parameter, option A shortcuts, 4-pixel pad +
crop + flip) cut to DEPTH_EPOCHS epochs with the lr divided by 10 at 50% and 75% of the
steps (the paper's 32k and 48k of 64k), the same steps for every depth. The 110-layer nets
use the paper's lr-0.01 warm-up (400 steps). The runner trains the depth endpoints, 20 and
56 layers.

ImageNet-style study (Table 2, Figure 4, Table 3): `plain18`, `plain34`, `resnet18_A`,
`resnet34_A`, `resnet34_B`, `resnet34_C` (name: model and shortcut option), the paper's
ImageNet recipe (lr 0.1 per 256 images, so 0.05 at batch 128; the rest as above) for
IMAGENET_STYLE_EPOCHS epochs on the images resized to IMAGENET_STYLE_SIZE: the ImageNet stem
downsamples by 4, so 56x56 inputs give the four stages 14, 7, 4 and 2 pixel maps, where 28x28
would leave the last stage 1x1.

Seeds: `NAME` trains with seed 0, `NAME-seed1` and `NAME-seed2` with seeds 1 and 2 (initial
weights and data order); the runner trains three seeds of the nets whose comparisons decide
the paper's claims (SEEDED_NETS). Round one's recipe, kept for its report, is
configs/reproduce_round_one.py.
"""

from flax_resnet.config import default_config

DEPTH_EPOCHS = 24
IMAGENET_STYLE_EPOCHS = 3
IMAGENET_STYLE_SIZE = 56
SEEDS = (0, 1, 2)

DEPTH_NETS = tuple(f"cifar_{kind}{depth}" for kind in ("plain", "resnet")
                   for depth in (20, 32, 44, 56, 110))
IMAGENET_STYLE_NETS = ("plain18", "plain34", "resnet18_A", "resnet34_A", "resnet34_B",
                       "resnet34_C")
NETS = DEPTH_NETS + IMAGENET_STYLE_NETS

# What the runner trains: the depth endpoints and the ImageNet-style study, three seeds of
# the nets that decide a claim (degradation, residual against plain, gain from depth).
DEPTH_ENDPOINTS = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56")
SEEDED_NETS = ("plain18", "resnet18_A") + DEPTH_ENDPOINTS


def run_name(net: str, seed: int) -> str:
  return net if seed == 0 else f"{net}-seed{seed}"


def _runs(nets) -> tuple[str, ...]:
  return tuple(run_name(net, seed) for net in nets
               for seed in (SEEDS if net in SEEDED_NETS else SEEDS[:1]))


DEPTH_RUNS = _runs(DEPTH_ENDPOINTS)
IMAGENET_STYLE_RUNS = _runs(IMAGENET_STYLE_NETS)
RUNS = DEPTH_RUNS + IMAGENET_STYLE_RUNS


def parse_run(run: str) -> tuple[str, int]:
  """('resnet18_A', 1) for 'resnet18_A-seed1'; a ValueError for a name of no net."""
  net, separator, seed = run.partition("-seed")
  if net not in NETS or (separator and not (seed.isdigit() and str(int(seed)) == seed)):
    raise ValueError(f"unknown run {run!r}; a run is a net, or NET-seedS for seed S; the nets "
                     f"are {', '.join(NETS)}")
  return net, int(seed or 0)


def get_config(run: str = "cifar_resnet20"):
  net, seed = parse_run(run)
  config = default_config()
  model, _, shortcut = net.partition("_") if not net.startswith("cifar_") else (net, "", "")
  config.model = model
  config.shortcut = shortcut  # "": the model's own (A for the CIFAR nets, B for ImageNet's)
  config.seed = seed
  config.dataset = "fashion_mnist"
  config.cache = True
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.learning_rate = 0.1
  # the paper's lr per image: 0.1 per 128 on CIFAR, 0.1 per 256 on ImageNet
  config.lr_reference_batch_size = 256 if net in IMAGENET_STYLE_NETS else 128
  config.weight_decay_on = "all"  # the paper exempts no parameter
  set_epochs(config, IMAGENET_STYLE_EPOCHS if net in IMAGENET_STYLE_NETS else DEPTH_EPOCHS)
  config.log_every_steps = 25
  if net in IMAGENET_STYLE_NETS:
    config.image_size = IMAGENET_STYLE_SIZE
  if net.endswith("110"):  # the paper's warm-up for its 110-layer nets
    config.warmup_steps = 400
    config.warmup_mode = "constant"
  return config


def set_epochs(config, epochs: float) -> None:
  """Trains `config` for `epochs`, the lr divided by 10 at 50% and 75% of them."""
  config.num_epochs = epochs
  config.lr_decay_epochs = (0.5 * epochs, 0.75 * epochs)
