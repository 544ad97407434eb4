"""Temporary: replaced by the split of pipeline.py."""
from flax_resnet.data.pipeline import DATASETS, dataset_info, steps_per_epoch, _prepared_builder, _checked_folder


def check_data(config):
  info = dataset_info(config)
  if config.dataset == "image_folder":
    _checked_folder(config)
  else:
    _prepared_builder(config)
  return info
