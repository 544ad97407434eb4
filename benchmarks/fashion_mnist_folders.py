"""Fashion-MNIST as image folders of chosen classes, for the fine-tuning example of README.md.

    python benchmarks/fashion_mnist_folders.py OUT --classes=0,1,2,3,4
    python benchmarks/fashion_mnist_folders.py OUT --classes=5,6,7,8,9 --per_class=100

writes OUT/train/<class>/<index>.png (the first `per_class` training images of each class in
file order; all of them by default) and OUT/val/<class>/<index>.png (every test image of the
classes), from the IDX files of Debian's dataset-fashion-mnist package, for
`--config.dataset=image_folder --config.data_dir=OUT`. Class folders are named
'<label> <name>' ('5 Sandal'), so their sorted order is the labels' order.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image

from flax_resnet.data.class_names import FASHION_MNIST_CLASSES
from flax_resnet.data.fashion_mnist import DEFAULT_SOURCE_DIR, find_idx_files, read_idx


def write_folders(out: pathlib.Path, classes: list[int], per_class: int = 0,
                  source_dir: str = DEFAULT_SOURCE_DIR) -> dict[str, int]:
  """Writes the two splits; returns the number of images of each."""
  files = find_idx_files(source_dir)
  counts = {}
  for split, prefix, limit in (("train", "train", per_class), ("val", "t10k", 0)):
    images = read_idx(files[f"{prefix}-images-idx3-ubyte"])
    labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"])
    counts[split] = 0
    for label in classes:
      folder = out / split / f"{label} {FASHION_MNIST_CLASSES[label].replace('/', '-')}"
      folder.mkdir(parents=True, exist_ok=True)
      chosen = np.flatnonzero(labels == label)
      for index in chosen[:limit] if limit else chosen:
        Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
        counts[split] += 1
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", type=pathlib.Path)
  parser.add_argument("--classes", required=True, help="labels, e.g. 0,1,2,3,4")
  parser.add_argument("--per_class", type=int, default=0, help="training images per class "
                      "(0: all)")
  parser.add_argument("--source_dir", default=DEFAULT_SOURCE_DIR)
  args = parser.parse_args()
  counts = write_folders(args.out, [int(c) for c in args.classes.split(",")], args.per_class,
                         args.source_dir)
  print(f"{args.out}: {counts['train']} training and {counts['val']} validation images")


if __name__ == "__main__":
  main()
