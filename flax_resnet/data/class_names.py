"""The names of a dataset's classes, in label order, as a run records them in its work
directory (flax_resnet/workdir.py): Fashion-MNIST's and CIFAR-10's as their datasets publish
them, ImageNet's by the first lemma of each class, an image folder's by its sorted class
folders."""

from __future__ import annotations

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def imagenet_class_names() -> list[str]:
  """ImageNet's 1000 classes by their first lemma ('tench', 'goldfish', ...)."""
  from flax_resnet.imagenet_classes import IMAGENET_CLASSES, short_name
  return [short_name(i) for i in range(len(IMAGENET_CLASSES))]


def class_names(config) -> list[str]:
  """The names of `config.dataset`'s classes, in label order (an image folder's: the train
  split's class folders, as data/image_folder.py labels them)."""
  if config.dataset == "image_folder":
    from flax_resnet.data import image_folder  # imports TensorFlow
    return list(image_folder.scan(config.data_dir).classes)
  if config.dataset == "imagenet2012":
    return imagenet_class_names()
  return list({"fashion_mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES}[
      config.dataset])
