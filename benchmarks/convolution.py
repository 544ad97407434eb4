"""Speed of one convolution's forward pass and its two gradients, on one device.

    python benchmarks/convolution.py [--batch_size=32] [--image_size=32] [--channels=64] \
        [--stride=1] [--conv_library=auto|ynnpack|eigen] [--calls=5] [--compare_torch] \
        [--formulation=direct|width_taps|all_taps]

Why: a ResNet's train step is mostly convolutions, and on the CPU XLA hands them to one of two
libraries (Eigen, `flax_resnet.cpu.DEFAULT_CONVOLUTION_LIBRARY`, or YNNPACK) whose speed
depends on the CPU and differs between the three convolutions of a training step. This prints
each one's best time over `--calls` calls and its GFLOP/s, so the choice can be checked on a
new machine; pin it to one core (`taskset -c 0`) to compare libraries core for core.
`--compare_torch` also times PyTorch's three (NCHW, as many threads as the process has cores)
and prints ours / PyTorch, to show whether a gap in the whole step lies in the convolutions.
`--formulation` writes the same convolution another way before XLA sees it (the 3x3 taps
gathered into channels: the three of a row, then a 3x1 convolution over 3c channels; or all
nine, then one matrix product), the rewrites tried for the CIFAR nets' slow 16-channel
convolutions (benchmarks/README.md); each is checked against the direct convolution first.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax_resnet import cpu  # noqa: E402  (no jax backend started yet)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--channels", type=int, default=64, help="in and out channels")
  p.add_argument("--stride", type=int, default=1)
  p.add_argument("--conv_library", default="auto", choices=("auto", *cpu.CONVOLUTION_LIBRARIES))
  p.add_argument("--calls", type=int, default=5, help="timed calls (the best is reported)")
  p.add_argument("--compare_torch", action="store_true",
                 help="also time PyTorch's forward and gradients of the same convolution")
  p.add_argument("--formulation", default="direct", choices=tuple(FORMULATIONS),
                 help="how the convolution is written for XLA (the others need stride 1)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.formulation != "direct" and args.stride != 1:
    raise SystemExit(f"--formulation={args.formulation} needs --stride=1")
  library = cpu.resolve_convolution_library(
      None if args.conv_library == "auto" else args.conv_library)
  cpu.configure_cpu(1, convolution_library=library)
  import jax
  import jax.numpy as jnp
  import numpy as np

  n, size, c, s = args.batch_size, args.image_size, args.channels, args.stride
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, size, size, c)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, c, c)) * 0.05, jnp.float32)

  expected = direct(x, w, stride=s)
  if args.formulation == "direct":
    forward = functools.partial(direct, stride=s)
  else:
    forward = FORMULATIONS[args.formulation]
    np.testing.assert_allclose(forward(x, w), expected, rtol=1e-4, atol=1e-4 * float(
        jnp.abs(expected).max()))
  dy = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
  programs = {
      "forward": (forward, (x, w)),
      "input_gradient": (lambda dy, w: jax.vjp(lambda x: forward(x, w), x)[1](dy)[0], (dy, w)),
      "weight_gradient": (lambda x, dy: jax.vjp(lambda w: forward(x, w), w)[1](dy)[0], (x, dy)),
  }
  flops = 2 * dy.size * 9 * c  # each of the three is one output's worth of 3x3 x c MACs
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"convolutions on {library}")
  checked = "" if args.formulation == "direct" else " (same output as the direct convolution)"
  print(f"convolution: batch {n}, {size}x{size}, 3x3, {c} -> {c} channels, stride {s}, "
        f"written as {args.formulation}{checked}")
  torch_calls = torch_programs(np.asarray(x), np.asarray(w), np.asarray(dy), s) \
      if args.compare_torch else {}
  for name, (fn, operands) in programs.items():
    compiled = jax.jit(fn).lower(*operands).compile()
    best = best_seconds(lambda: jax.block_until_ready(compiled(*operands)), args.calls)
    print(f"{name}: {best * 1e3:.1f} ms  ({flops / best / 1e9:.1f} GFLOP/s, best of "
          f"{args.calls})")
    if name in torch_calls:
      theirs = best_seconds(torch_calls[name], args.calls)
      print(f"  torch_{name}: {theirs * 1e3:.1f} ms  ({flops / theirs / 1e9:.1f} GFLOP/s); "
            f"ours / PyTorch (speed): {theirs / best:.2f}")


_NHWC = ("NHWC", "HWIO", "NHWC")


def direct(x, w, stride: int = 1):
  """The convolution as the models write it: one `lax.conv_general_dilated`, padding 1."""
  from jax import lax
  return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                  dimension_numbers=_NHWC)


def width_taps(x, w):
  """The three horizontal taps of each pixel side by side in channels (3c), then a 3x1
  convolution: fewer, longer rows for the convolution's patch extraction, 3x the input."""
  import jax.numpy as jnp
  from jax import lax
  size = x.shape[2]
  padded = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
  taps = jnp.concatenate([padded[:, :, d:d + size] for d in range(3)], axis=-1)
  return lax.conv_general_dilated(taps, w.reshape(3, 1, -1, w.shape[-1]), (1, 1),
                                  ((1, 1), (0, 0)), dimension_numbers=_NHWC)


def all_taps(x, w):
  """im2col: all nine taps side by side in channels (9c), then one matrix product."""
  import jax.numpy as jnp
  h, wd = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = jnp.concatenate([padded[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)],
                         axis=-1)
  return taps @ w.reshape(-1, w.shape[-1])


FORMULATIONS = {"direct": direct, "width_taps": width_taps, "all_taps": all_taps}


def best_seconds(call, calls: int) -> float:
  """Best wall time of `calls` calls, after one untimed call."""
  call()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return min(times)


def torch_programs(x, w, dy, stride: int):
  """PyTorch's forward, input gradient and weight gradient of the same 3x3 convolution."""
  import torch
  torch.set_num_threads(cpu.default_cpu_device_count())
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
  x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  w = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
  dy = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())

  def gradient(input_mask):
    return lambda: torch.ops.aten.convolution_backward(
        dy, x, w, None, [stride, stride], [1, 1], [1, 1], False, [0, 0], 1, input_mask)

  return {"forward": lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1),
          "input_gradient": gradient([True, False, False]),
          "weight_gradient": gradient([False, True, False])}


if __name__ == "__main__":
  main()
