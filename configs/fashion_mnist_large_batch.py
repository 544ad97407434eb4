"""Large batches on one machine's worth of data: the short quick start at batch 1,024.

    python train.py --config=configs/fashion_mnist_large_batch.py:lars --workdir=DIR

One change at a time against `fashion_mnist_short.py` (batch 128, 5 epochs, cosine schedule,
0.2 epochs of linear warm-up, lr 0.1 x batch / 128); the same epochs and everything else
the same, so 293 steps instead of 2,345:

  sgd           batch 1,024: the learning rate scaled linearly to 0.8 (Goyal et al.)
  sgd_warmup    ... and one epoch of linear warm-up instead of 0.2 (their gradual warm-up)
  lars          ... and LARS instead of SGD (optax.lars: the kernels' steps scaled by
                0.001 x |w| / |g + wd w|; biases and BatchNorm parameters plain SGD), at
                the same peak learning rate
  accumulation  sgd_warmup's recipe in 8 micro-batches of 128 per step: the memory of batch
                128 (BatchNorm normalizes each micro-batch of 128 on its own)

LARS's peak learning rate is SGD's here, not tuned: with momentum 0.9 and wd 1e-4, a
BatchNorm network's kernels turn by about sqrt(2 lr wd / 1.9) radians per SGD step, 0.009 at
lr 0.8, and LARS turns each by up to lr x 0.001 / (1 - 0.9), 0.008 at the same lr (momentum
adds its steps up as far as successive gradients agree).
"""

from configs import fashion_mnist_short

VARIANTS = ("sgd", "sgd_warmup", "lars", "accumulation")


def get_config(variant: str = "sgd_warmup"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}")
  config = fashion_mnist_short.get_config()
  config.batch_size = 1024
  if variant != "sgd":
    config.warmup_epochs = 1.0
  if variant == "lars":
    config.optimizer = "lars"
  if variant == "accumulation":
    config.grad_accum_steps = 8
  return config
