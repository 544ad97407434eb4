"""What a resumed run may change (flax_resnet/resume.py): another model, width, dataset or
class count, batch size or image shape is refused, other training fields listed, bookkeeping
free."""

import pytest

from flax_resnet.config import default_config
from flax_resnet.errors import CheckpointError
from flax_resnet.resume import check_same_run


META = {"model": "cifar_resnet20", "widths": [16, 32, 64], "dataset": "fashion_mnist",
        "num_classes": 10}


def test_check_same_run():
  check_same_run(dict(META), META, "w")
  check_same_run({k: v for k, v in META.items() if k != "widths"}, META, "w")  # model's own
  for change in ({"model": "cifar_resnet32"}, {"widths": [8, 16, 32]}, {"dataset": "cifar10"},
                 {"num_classes": 100}):
    with pytest.raises(CheckpointError, match="use another --workdir"):
      check_same_run({**META, **change}, META, "w")


def _meta(**changes):
  config = default_config()
  config.update(dict(model="cifar_resnet20", dataset="fashion_mnist", batch_size=32))
  config.update(changes)
  shape = [config.image_size or 28] * 2 + [1]
  return {"model": config.model, "widths": [16, 32, 64], "dataset": config.dataset,
          "num_classes": 10, "image_shape": shape, "config": config.to_dict()}


@pytest.mark.parametrize("change", [{"batch_size": 64}, {"image_size": 32}])
def test_another_batch_size_or_image_shape_is_refused(change):
  with pytest.raises(CheckpointError, match="A resumed run keeps both"):
    check_same_run(_meta(), _meta(**change), "w")


def test_other_training_changes_are_listed_and_bookkeeping_is_free():
  saved = _meta()
  assert check_same_run(saved, _meta(), "w") == []
  assert check_same_run(saved, _meta(log_every_steps=7, eval_every_steps=3, plot=False,
                                     keep_checkpoints=9, scan_blocks=True), "w") == []
  assert check_same_run(saved, _meta(learning_rate=0.2, lr_decay_epochs=(10,),
                                     num_train_steps=99), "w") == [
      "learning_rate 0.1 -> 0.2", "lr_decay_epochs [30, 60] -> [10]",
      "num_train_steps 0 -> 99"]
  # checkpoints of runs that recorded no config or image shape are compared by identity only
  old = {k: v for k, v in saved.items() if k not in ("config", "image_shape")}
  assert check_same_run(old, _meta(batch_size=64), "w") == []


def test_init_from_is_free_and_the_trained_parameter_groups_are_kept():
  saved = _meta(init_from="a.safetensors", trainable="all", backbone_lr_scale=0.1)
  assert check_same_run(saved, _meta(init_from="b", init_from_step=3, trainable="all",
                                     backbone_lr_scale=0.1), "w") == []
  assert check_same_run(saved, _meta(backbone_lr_scale=0.2), "w") == [
      "backbone_lr_scale 0.1 -> 0.2"]
  for change in ({"trainable": "head"}, {"backbone_lr_scale": 1.0}):
    with pytest.raises(CheckpointError, match="The optimizer state's layout depends"):
      check_same_run(saved, _meta(**change), "w")
  # a run that recorded no trainable field trained all parameters at one rate
  old = _meta()
  del old["config"]["trainable"], old["config"]["backbone_lr_scale"]
  assert check_same_run(old, _meta(), "w") == []
