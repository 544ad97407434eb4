"""Inference speed of an exported ONNX graph on onnxruntime against our jitted apply, on this
machine's CPU, in one process: ResNet-18 and ResNet-50 at 224x224, batch 1 and 32.

    python benchmarks/onnx_speed.py [--repeats=5] [--models=resnet18,resnet50] [--batches=1,32]

Needs jax2onnx and onnxruntime (the package's `export` extra). Ours is `model.apply(...,
train=False)` jitted, as `flax_resnet.load` builds the model (with the CPU formulations of
flax_resnet.cpu); onnxruntime runs flax_resnet.export.to_onnx's graph with its default
session options (all cores). Each figure is the median wall time of `repeats` calls after one
warm-up call; the ratio is ours / onnxruntime's (above 1: onnxruntime is faster).
"""

import argparse
import statistics
import time

import jax
import numpy as np

from flax_resnet import cpu, create_model
from flax_resnet.export import to_onnx


def median_seconds(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--models", default="resnet18,resnet50")
  parser.add_argument("--batches", default="1,32")
  args = parser.parse_args()
  import onnxruntime as ort

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, onnxruntime "
        f"{ort.__version__}; median of {args.repeats} calls")
  print(f"{'model':10} {'batch':>5} {'ours ms':>9} {'onnxruntime ms':>15} {'ours/ort':>9}")
  for name in args.models.split(","):
    model = create_model(name, **cpu.model_overrides())
    variables = model.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    session = ort.InferenceSession(to_onnx(model, variables, (224, 224, 3)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for batch in (int(b) for b in args.batches.split(",")):
      x = np.random.RandomState(0).randn(batch, 224, 224, 3).astype(np.float32)
      ours = median_seconds(lambda: apply(variables, x).block_until_ready(), args.repeats)
      theirs = median_seconds(lambda: session.run(["logits"], {"images": x}), args.repeats)
      print(f"{name:10} {batch:5d} {ours * 1e3:9.1f} {theirs * 1e3:15.1f} {ours / theirs:9.2f}",
            flush=True)


if __name__ == "__main__":
  main()
