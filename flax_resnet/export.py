"""Exports a trained work directory's model for use outside JAX:

    python -m flax_resnet.export --workdir=W --format=onnx model.onnx
    python -m flax_resnet.export --workdir=W --format=torchvision resnet50.safetensors
    python -m flax_resnet.export --workdir=W --format=timm --model=resnetv2_50 model.safetensors

ONNX: the inference graph (BatchNorm with its running statistics) of the run's network, NHWC
float32 input of the run's image shape with a free batch dimension, logits out; written by
jax2onnx (`pip install jax2onnx onnx`, or the package's `export` extra). The stem's max-pool
is written as the maximum of its nine shifted windows, which jax2onnx converts (its own
max-pool conversion takes only 'SAME' and 'VALID' padding); the values are the same.
torchvision, timm: the weights as a .safetensors state dict (convert.py, convert_timm.py).
"""

from __future__ import annotations

import argparse
import logging
import sys

import jax
import jax.numpy as jnp

from flax_resnet import cpu
from flax_resnet.models import ResNet

FORMATS = ("onnx", "torchvision", "timm")


def padded_max_pool(x, window_shape, strides, padding):
  """`nn.max_pool` with explicit ((top, bottom), (left, right)) padding, as the maximum of the
  strided windows' shifted slices of the -inf-padded input (elementwise Max in ONNX)."""
  (top, bottom), (left, right) = padding
  x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  (kh, kw), (sh, sw) = window_shape, strides
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  windows = [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
             for i in range(kh) for j in range(kw)]
  out = windows[0]
  for window in windows[1:]:
    out = jnp.maximum(out, window)
  return out


def to_onnx(model, variables, image_shape, name: str = "resnet"):
  """The ONNX ModelProto of `model.apply(variables, x, train=False)` for x of shape
  (batch, *image_shape), batch free ('batch'); input 'images', output 'logits'."""
  if model.shortcut_downsample == "avg_pool":
    raise ValueError("ONNX export does not cover ResNet-D's average-pooled shortcuts "
                     "(jax2onnx converts average pools with 'SAME' or 'VALID' padding only)")
  from jax2onnx import to_onnx as jax2onnx_to_onnx
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)  # its optional plugins' import notes
  # The plain layers, not the CPU training formulations (cpu.model_overrides), whose
  # custom operations the converter does not know; the same function.
  plain = {field: ResNet.__dataclass_fields__[field].default
           for field in cpu.model_overrides(backend="cpu")}
  model = model.clone(**{**plain, "pool": padded_max_pool}, dtype=jnp.float32)
  proto = jax2onnx_to_onnx(
      lambda x: model.apply(variables, x, train=False),
      inputs=[jax.ShapeDtypeStruct(("batch", *image_shape), jnp.float32)], model_name=name,
      input_names=["images"], output_names=["logits"])
  # jax2onnx records some intermediate shapes in the wrong layout, which onnxruntime's shape
  # inference then rejects; the shapes follow from the graph, so none are recorded.
  del proto.graph.value_info[:]
  return proto


def export(workdir: str, out: str, fmt: str, step: int | None = None, ema: bool = False,
           model_name: str | None = None) -> None:
  """Writes the model of `workdir` to `out` in format `fmt` (one of FORMATS)."""
  from flax_resnet.workdir import load
  run = load(workdir, step=step, ema=ema)
  if fmt == "onnx":
    proto = to_onnx(run.model, run.variables, run.image_shape, run.config.model)
    with open(out, "wb") as f:
      f.write(proto.SerializeToString())
    return
  from safetensors.numpy import save_file
  if fmt == "torchvision":
    from flax_resnet.convert import to_torchvision
    state = to_torchvision(run.variables, model_name or run.config.model)
  else:
    from flax_resnet.convert_timm import to_timm
    state = to_timm(run.variables, model_name or run.config.model)
  save_file(state, out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m flax_resnet.export",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("out", metavar="OUT")
  parser.add_argument("--workdir", required=True, help="a work directory of train.py")
  parser.add_argument("--format", choices=FORMATS, default="onnx")
  parser.add_argument("--model", help="torchvision or timm: its name for the network (default: "
                                      "the run's model name)")
  parser.add_argument("--step", type=int, help="this checkpoint (default: the newest)")
  parser.add_argument("--ema", action="store_true", help="the EMA weights")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's notices: the output is ours alone
  from flax_resnet.errors import USER_ERRORS
  try:
    export(args.workdir, args.out, args.format, args.step, args.ema, args.model)
  except ImportError as e:
    print(f"error: --format={args.format} needs {e.name or e} (pip install jax2onnx onnx)",
          file=sys.stderr)
    return 1
  except (*USER_ERRORS, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
