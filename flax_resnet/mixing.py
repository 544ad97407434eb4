"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a batch, as timm's Mixup.

Both blend each example with another example of the same batch, chosen by a random
permutation, and train against the same blend of their (label-smoothed) one-hot targets:

  mixup:  image = lam * x + (1 - lam) * x[perm]
  CutMix: image = x with a box pasted from x[perm]; lam = the share of x left uncovered
  target = lam * onehot(y) + (1 - lam) * onehot(y[perm])

`lam` is drawn once per batch from Beta(alpha, alpha). The functions are pure JAX and take
their randomness from a key, so the train step mixes each device's shard on that device,
reproducibly for a given key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class Mixed(NamedTuple):
  images: jax.Array
  targets: jax.Array    # soft targets, (batch, num_classes)
  lam: jax.Array        # the weight of the unpermuted examples (after CutMix's correction)
  perm: jax.Array       # which example each one was mixed with


def mixup_images(images, perm, lam):
  """lam * images + (1 - lam) * images[perm]."""
  lam = jnp.asarray(lam, images.dtype)
  return lam * images + (1 - lam) * images[perm]


def cutmix_box(key, height: int, width: int, lam):
  """timm's rand_bbox: a box of about (1 - lam) of the image's area at a uniformly random
  center, clipped to the image. Returns (top, bottom, left, right), half-open."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def cutmix_images(images, perm, box):
  """`images` (B, H, W, C) with the box (top, bottom, left, right) taken from images[perm];
  returns (images, lam) where lam is the uncovered share of the area: the box as clipped,
  not as drawn (timm's correct_lam)."""
  height, width = images.shape[1:3]
  top, bottom, left, right = box
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  mixed = jnp.where(inside[None, :, :, None], images[perm], images)
  lam = 1.0 - (bottom - top) * (right - left) / (height * width)
  return mixed, jnp.asarray(lam, jnp.float32)


def mix_targets(labels, perm, lam, num_classes: int, label_smoothing: float = 0.0):
  """lam * onehot(y) + (1 - lam) * onehot(y[perm]), each one-hot label-smoothed first."""
  onehot = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return lam * onehot + (1 - lam) * onehot[perm]


def mix_batch(key, images, labels, *, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float, switch_prob: float = 0.5,
              label_smoothing: float = 0.0) -> Mixed:
  """Mixup or CutMix of one batch (at least one alpha > 0). With both on, CutMix is chosen
  with probability `switch_prob` for the whole batch, as timm does."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
  key_perm, key_mixup, key_cutmix, key_box, key_switch = jax.random.split(key, 5)
  perm = jax.random.permutation(key_perm, images.shape[0])
  candidates = []
  if mixup_alpha > 0:
    lam = jax.random.beta(key_mixup, mixup_alpha, mixup_alpha).astype(jnp.float32)
    candidates.append((mixup_images(images, perm, lam), lam))
  if cutmix_alpha > 0:
    lam = jax.random.beta(key_cutmix, cutmix_alpha, cutmix_alpha).astype(jnp.float32)
    box = cutmix_box(key_box, images.shape[1], images.shape[2], lam)
    candidates.append(cutmix_images(images, perm, box))
  if len(candidates) == 2:
    use_cutmix = jax.random.bernoulli(key_switch, switch_prob)
    (mixup_x, mixup_lam), (cutmix_x, cutmix_lam) = candidates
    mixed = jnp.where(use_cutmix, cutmix_x, mixup_x)
    lam = jnp.where(use_cutmix, cutmix_lam, mixup_lam)
  else:
    mixed, lam = candidates[0]
  targets = mix_targets(labels, perm, lam, num_classes, label_smoothing)
  return Mixed(mixed, targets, lam, perm)


def dominant_labels(labels, perm, lam):
  """The label with the larger weight in each mixed example: what train accuracy is
  measured against under mixing."""
  return jnp.where(lam >= 0.5, labels, labels[perm])
