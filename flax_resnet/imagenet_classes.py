"""The 1000 ImageNet (ILSVRC-2012) classes in the order of the standard label indices.

Index i is the class that torchvision, Keras, TFDS and the Flax examples all call label i: the
WordNet synsets sorted by id. The table is the package's data file
data_files/imagenet_classes.tsv (one "synset<TAB>names" line per class, from the lists
TensorFlow Datasets ships), so that predictions can be named offline.
"""

from __future__ import annotations

import importlib.resources


def _read_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
  text = (importlib.resources.files("flax_resnet") / "data_files" / "imagenet_classes.tsv"
          ).read_text(encoding="utf-8")
  rows = [line.split("\t") for line in text.splitlines() if line]
  return tuple(synset for synset, _ in rows), tuple(names for _, names in rows)


# IMAGENET_SYNSETS[i]: the WordNet id of class i; IMAGENET_CLASSES[i]: its names, comma-separated.
IMAGENET_SYNSETS, IMAGENET_CLASSES = _read_table()


def short_name(index: int) -> str:
  """The first lemma of class `index`, e.g. 0 -> "tench"."""
  return IMAGENET_CLASSES[index].split(",")[0]
