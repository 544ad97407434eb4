"""Classifies images from the command line, with a trained work directory or PyTorch weights:

    python -m flax_resnet.predict --workdir=W IMAGE_OR_FOLDER... [--top=5] [--csv=OUT.csv]
    python -m flax_resnet.predict --weights=resnet50.safetensors --model=resnet50 photo.jpg

Prints one line per image: its path and its top classes with probabilities. A folder stands
for the image files in it and its subfolders (by extension, sorted). Images are preprocessed as
the run's evaluation does (`flax_resnet.load(W).preprocess`), torchvision's and timm's weights
with torchvision's ImageNet transform, and classified in batches. A missing path, a file that
is not an image or an image of the wrong channel count is one line on stderr; the others are
still classified, and the exit status is 1.

`flax_resnet.predict`, the package's function, stays callable where this module has been
imported under the same name (see the end of this file).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import types

from PIL import Image


def image_files(inputs: list[str]) -> list[str]:
  """Each input file as given; a folder's image files (by extension), sorted, recursively."""
  extensions = {e for e, f in Image.registered_extensions().items() if f in Image.OPEN}
  files = []
  for given in inputs:
    if not os.path.isdir(given):
      files.append(given)
      continue
    for root, dirs, names in os.walk(given):
      dirs.sort()
      files += [os.path.join(root, n) for n in sorted(names)
                if os.path.splitext(n)[1].lower() in extensions]
  return files


def load_model(args):
  """(model, variables, class names, preprocess function) from --workdir or --weights."""
  if args.workdir:
    from flax_resnet.workdir import load
    run = load(args.workdir, step=args.step, ema=args.ema)
    return run.model, run.variables, run.class_names, run.preprocessor()
  from flax_resnet import convert, convert_timm, inference
  if args.model in convert.torchvision_models():
    model, variables = convert.from_torchvision(args.weights, args.model)
  elif args.model in convert_timm.timm_models():
    model, variables = convert_timm.from_timm(args.weights, args.model)
  else:
    raise ValueError(f"--model={args.model} is none of torchvision's "
                     f"{convert.torchvision_models()} nor timm's {convert_timm.timm_models()}")
  return model, variables, None, inference.preprocess


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m flax_resnet.predict",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a work directory of train.py (local or gs://)")
  source.add_argument("--weights", help="torchvision's or timm's .safetensors or .pth file")
  parser.add_argument("--model", help="with --weights: its network, e.g. resnet50, resnetv2_50")
  parser.add_argument("--step", type=int, help="with --workdir: this checkpoint (default newest)")
  parser.add_argument("--ema", action="store_true", help="with --workdir: the EMA weights")
  parser.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--csv", help="also write the predictions to this CSV file")
  args = parser.parse_args(argv)
  if args.weights and not args.model:
    parser.error("--weights needs --model")
  if args.batch_size < 1:
    parser.error("--batch_size must be positive")
  return args


def batches(files: list[str], preprocess, size: int, failed: list):
  """(paths, images) of up to `size` readable images; a bad file goes to `failed`."""
  import numpy as np
  from flax_resnet.errors import DataError
  paths, images = [], []
  for path in files:
    try:
      images.append(preprocess(path))
      paths.append(path)
    except (DataError, FileNotFoundError) as e:
      failed.append((path, str(e)))
      print(f"error: {e}", file=sys.stderr, flush=True)
    if len(images) == size:
      yield paths, np.stack(images)
      paths, images = [], []
  if images:
    yield paths, np.stack(images)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from absl import logging
  logging.set_verbosity(logging.ERROR)  # orbax's notices: the output is ours alone
  from flax_resnet.cpu import configure_cpu
  from flax_resnet.errors import USER_ERRORS
  configure_cpu()
  try:
    model, variables, class_names, preprocess = load_model(args)
  except (*USER_ERRORS, FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  import numpy as np
  from flax_resnet.inference import classify
  k = min(args.top, model.num_classes)
  rows, failed = [], []
  for paths, images in batches(image_files(args.images), preprocess, args.batch_size, failed):
    padded = np.concatenate([images, np.repeat(images[:1], args.batch_size - len(images), 0)])
    for path, predictions in zip(paths, classify(model, variables, padded, k, class_names)):
      rows.append((path, predictions))
      print(f"{path}: " + ", ".join(
          f"{p.name if p.name is not None else p.index} {p.probability:.3f}"
          for p in predictions), flush=True)
  if args.csv:
    write_csv(args.csv, rows, failed, k)
  print(f"{len(rows)} images classified" + (f", {len(failed)} failed" if failed else ""),
        file=sys.stderr)
  return 1 if failed else 0


def write_csv(path: str, rows, failed, k: int) -> None:
  """One row per image: path, then index, name and probability of each of the top k, then
  the error of an image that could not be classified."""
  header = ["path"] + [f"{field}_{rank}" for rank in range(1, k + 1)
                       for field in ("index", "name", "probability")] + ["error"]
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for image, predictions in rows:
      writer.writerow([image] + [value for p in predictions
                                 for value in (p.index, p.name or "", f"{p.probability:.6f}")]
                      + [""])
    for image, error in failed:
      writer.writerow([image] + [""] * (3 * k) + [error])


class _CallableModule(types.ModuleType):
  """Importing this module sets the attribute `flax_resnet.predict` to it, where the package's
  `predict` function was: calling the module calls that function, so both keep working."""

  def __call__(self, *args, **kwargs):
    from flax_resnet.inference import predict
    return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
  sys.exit(main())
