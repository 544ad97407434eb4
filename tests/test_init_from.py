"""Fine-tuning: config.init_from (torchvision/timm weight files, another work directory), the
linear probe (config.trainable='head') and the backbone's learning-rate scale."""

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

import flax_resnet
from flax_resnet import optim
from flax_resnet.checkpointing import read_checkpoint
from flax_resnet.errors import CheckpointError, ConfigError
from flax_resnet.init_from import initial_weights
from flax_resnet.parallel import AXIS
from flax_resnet.step import StepSettings, create_train_state, train_step
from step_utils import train_on
from train_utils import write_checkpoint

WIDTHS = (4, 4, 4, 4)
SHAPE = (32, 32, 3)


def flat(tree):
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in flax.traverse_util.flatten_dict(dict(tree)).items()}


def assert_bit_identical(a, b, skip=lambda key: False):
  a, b = flat(a), flat(b)
  assert a.keys() == b.keys()
  for key in a:
    if not skip(key):
      assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def config_for(**overrides):
  config = flax_resnet.default_config()
  config.update({"model": "resnet18", "widths": WIDTHS, "dataset": "image_folder", **overrides})
  return config


def source_variables(num_classes, seed=1):
  model = flax_resnet.create_model("resnet18", widths=WIDTHS, num_classes=num_classes)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *SHAPE)))
  # BatchNorm statistics of their own, so that keeping them is seen
  return jax.tree.map(np.asarray, {**variables, "batch_stats": jax.tree.map(
      lambda x: x + 0.25, variables["batch_stats"])})


@pytest.fixture
def torchvision_file(tmp_path):
  """A torchvision-format resnet18 state dict of 7 classes, written without torch."""
  variables = source_variables(7)
  path = str(tmp_path / "resnet18.safetensors")
  save_file(flax_resnet.to_torchvision(variables, "resnet18", widths=WIDTHS), path)
  return path, variables


def run_model(num_classes, **fields):
  return flax_resnet.create_model("resnet18", widths=WIDTHS, num_classes=num_classes,
                                  axis_name=AXIS, **fields)


# --- init_from: what is loaded, and the errors -----------------------------------------------

@pytest.mark.slow
def test_torchvision_file_with_other_classes_gets_a_new_head(torchvision_file, tmp_path):
  path, variables = torchvision_file
  start = initial_weights(config_for(init_from=path), run_model(3), SHAPE, str(tmp_path / "w"))
  assert "fc" not in start.variables["params"]  # the run's own initialization fills it
  assert start.source == f"torchvision weights {path}; classifier new (7 -> 3 classes)"
  without_fc = {**variables, "params": {k: v for k, v in variables["params"].items()
                                        if k != "fc"}}
  assert_bit_identical(start.variables, without_fc)
  assert not os.path.exists(tmp_path / "w")  # nothing written

  # the state built from it: the backbone loaded, the head the model's own init
  model = run_model(3)
  state = create_train_state(model, optax.sgd(0.1), SHAPE, jax.random.key(5),
                             start=start.variables)
  own = model.init(jax.random.key(5), jnp.zeros((1, *SHAPE)))
  assert_bit_identical(state.params["fc"], own["params"]["fc"])
  assert_bit_identical(state.batch_stats, variables["batch_stats"])


def test_the_same_classes_keep_the_head(torchvision_file, tmp_path):
  path, variables = torchvision_file
  start = initial_weights(config_for(init_from=path), run_model(7), SHAPE, str(tmp_path))
  assert start.source.endswith("classifier kept (7 classes)")
  assert_bit_identical(start.variables, variables)


def test_scanned_model_gets_the_scanned_layout(torchvision_file, tmp_path):
  path, variables = torchvision_file
  model = run_model(7, scan_blocks=True)
  start = initial_weights(config_for(init_from=path, scan_blocks=True), model, SHAPE,
                          str(tmp_path))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  assert jax.tree.structure(start.variables) == jax.tree.structure(dict(shapes))


def test_another_work_directory_at_its_newest_or_a_given_step(tmp_path):
  source = str(tmp_path / "pretrain")
  state = write_checkpoint(source, "resnet18", SHAPE, "image_folder", widths=WIDTHS,
                           num_classes=3)
  start = initial_weights(config_for(init_from=source), run_model(3), SHAPE,
                          str(tmp_path / "run"))
  assert start.source == f"work directory {source}, step 0; classifier kept (3 classes)"
  assert_bit_identical(start.variables["params"], state.params)
  assert_bit_identical(start.variables["batch_stats"], state.batch_stats)
  with pytest.raises(CheckpointError, match="no checkpoint of step 9"):
    initial_weights(config_for(init_from=source, init_from_step=9), run_model(3), SHAPE,
                    str(tmp_path / "run"))


def one_line(error):
  message = str(error.value)
  assert "\n" not in message
  return message


def test_a_mismatch_is_one_clear_error(torchvision_file, tmp_path):
  path, _ = torchvision_file
  workdir = str(tmp_path / "run")
  with pytest.raises(CheckpointError) as error:  # other widths
    initial_weights(config_for(init_from=path, widths=(8, 8, 8, 8)),
                    flax_resnet.create_model("resnet18", widths=(8, 8, 8, 8), num_classes=3),
                    SHAPE, workdir)
  assert "does not fit" in one_line(error)
  assert "bn1.running_var is (4,), expected (8,)" in one_line(error)
  with pytest.raises(CheckpointError) as error:  # grayscale images for an RGB network
    initial_weights(config_for(init_from=path), run_model(3), (32, 32, 1), workdir)
  assert "params/stem/conv/kernel is (7, 7, 3, 4), expected (7, 7, 1, 4)" in one_line(error)
  with pytest.raises(ConfigError) as error:
    initial_weights(config_for(init_from=str(tmp_path / "nothing.safetensors")), run_model(3),
                    SHAPE, workdir)
  assert "no weights file or work directory at" in one_line(error)
  with pytest.raises(ConfigError) as error:
    initial_weights(config_for(init_from=path, init_from_step=3), run_model(3), SHAPE, workdir)
  assert "selects a checkpoint of a work directory" in one_line(error)
  cifar = flax_resnet.default_config()
  cifar.update(model="cifar_resnet20", init_from=path)
  with pytest.raises(ConfigError) as error:
    initial_weights(cifar, flax_resnet.create_model("cifar_resnet20"), SHAPE, workdir)
  assert "has no torchvision or timm layout" in one_line(error)
  other = str(tmp_path / "other")
  write_checkpoint(other, "resnet34", SHAPE, "image_folder", widths=WIDTHS)
  with pytest.raises(CheckpointError) as error:
    initial_weights(config_for(init_from=other), run_model(3), SHAPE, workdir)
  assert "holds a run of resnet34, another network than this config's resnet18" in (
      one_line(error))
  not_weights = tmp_path / "notes.txt"
  not_weights.write_text("hello")
  with pytest.raises(CheckpointError) as error:
    initial_weights(config_for(init_from=str(not_weights)), run_model(3), SHAPE, workdir)
  assert "is not a weights file" in one_line(error)
  assert not os.path.exists(workdir)


def test_a_workdir_with_checkpoints_does_not_read_init_from(tmp_path):
  workdir = str(tmp_path / "run")
  write_checkpoint(workdir, "resnet18", SHAPE, "image_folder", widths=WIDTHS, num_classes=3)
  missing = config_for(init_from=str(tmp_path / "gone.safetensors"))
  assert initial_weights(missing, run_model(3), SHAPE, workdir) is None


def test_config_checks_the_fine_tuning_fields():
  from flax_resnet.config import check_config
  for overrides, message in (
      (dict(trainable="some"), "config.trainable='some' is not one of"),
      (dict(backbone_lr_scale=0.0), "config.backbone_lr_scale must be positive"),
      (dict(trainable="head", backbone_lr_scale=0.1), "applies to trainable='all'"),
      (dict(init_from_step=3), "init_from_step selects a checkpoint of config.init_from")):
    with pytest.raises(ConfigError, match=message):
      check_config(config_for(**overrides))


# --- The linear probe and the backbone's learning rate -----------------------------------------

def optimizer(**overrides):
  config = config_for(learning_rate=0.1, lr_reference_batch_size=0, lr_schedule="constant",
                      **overrides)
  learning_rate = optim.create_learning_rate_fn(config, 10, 100)
  return optim.create_optimizer(config, learning_rate), learning_rate


def test_a_linear_probe_trains_the_head_only_and_keeps_the_backbone_bit_identical():
  tx, learning_rate = optimizer(trainable="head", weight_decay=1e-2)
  model = run_model(5)
  state = create_train_state(model, tx, SHAPE, jax.random.key(0))
  # a -0.0 in the backbone: an update of +0.0 would turn it into 0.0
  state = state.replace(params=flax.core.copy(state.params, {}))
  bias = np.array(state.params["stage1"]["block1"]["bn1"]["bias"])
  bias[0] = -0.0
  state.params["stage1"]["block1"]["bn1"]["bias"] = jnp.asarray(bias)
  settings = StepSettings(model=model, num_classes=5, tx=tx, learning_rate_fn=learning_rate,
                          train_backbone=False)
  rng = np.random.default_rng(0)
  batches = [dict(image=rng.normal(size=(8, *SHAPE)).astype(np.float32),
                  label=rng.integers(0, 5, 8).astype(np.int32)) for _ in range(3)]
  before = jax.device_get(state)
  after, metrics = train_on("shard_map", jax.devices()[:2], state,
                            functools.partial(train_step, settings=settings), batches)
  assert np.isfinite(metrics["train_loss"])
  assert_bit_identical(after.params, before.params, skip=lambda key: key.startswith("fc/"))
  assert_bit_identical(after.batch_stats, before.batch_stats)
  assert not np.array_equal(after.params["fc"]["kernel"], before.params["fc"]["kernel"])
  # no optimizer state (momentum) for the backbone
  kept = [x for x in jax.tree.leaves(after.opt_state) if np.size(x) > 1]
  assert sum(np.size(x) for x in kept) == sum(np.size(x) for x in jax.tree.leaves(
      before.params["fc"]))


def test_backbone_lr_scale_scales_the_backbone_updates_only():
  params = create_train_state(run_model(5), optax.sgd(0.1), SHAPE, jax.random.key(0)).params
  grads = jax.tree.map(jnp.ones_like, params)
  updates = {}
  for scale in (1.0, 0.1):
    tx, _ = optimizer(backbone_lr_scale=scale, weight_decay=0.0)
    updates[scale] = flat(tx.update(grads, tx.init(params), params)[0])
  for key, update in updates[0.1].items():
    expected = updates[1.0][key] * (1.0 if key.startswith("fc/") else 0.1)
    np.testing.assert_allclose(update, expected, rtol=1e-6)
  assert np.all(updates[1.0]["fc/kernel"] == -0.1)


def test_a_linear_probe_optimizer_gives_the_backbone_no_weight_decay():
  params = create_train_state(run_model(5), optax.sgd(0.1), SHAPE, jax.random.key(0)).params
  tx, _ = optimizer(trainable="head", weight_decay=0.5, momentum=0.0)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = flat(tx.update(zeros, tx.init(params), params)[0])
  for key, update in updates.items():
    if key == "fc/kernel":  # weight decay on the head's kernel: -lr * wd * w
      np.testing.assert_allclose(update, -0.1 * 0.5 * np.asarray(params["fc"]["kernel"]),
                                 rtol=1e-6)
    elif not key.startswith("fc/"):
      assert not np.any(update), key


# --- Through the training loop -----------------------------------------------------------------

def image_folder(root, classes=("cat", "dog")):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for label, name in enumerate(classes):
      (root / split / name).mkdir(parents=True)
      for i in range(8):
        pixels = rng.integers(0, 80, SHAPE) + 150 * label
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")
  return str(root)


@pytest.mark.slow  # trains twice
def test_a_fine_tuning_run_resumes_without_reading_init_from_again(torchvision_file, tmp_path,
                                                                   capsys):
  path, variables = torchvision_file
  config = config_for(init_from=path, trainable="head", data_dir=image_folder(tmp_path / "data"),
                      image_size=32, batch_size=8, eval_batch_size=8, num_train_steps=2,
                      checkpoint_every_steps=2, eval_every_steps=2, log_every_steps=1,
                      ema_decay=0.5, plot=False, lr_reference_batch_size=0,
                      image_folder_check="full")
  workdir = str(tmp_path / "run")
  flax_resnet.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert f"weights: torchvision weights {path}; classifier new (7 -> 2 classes)" in out
  step, state, meta = read_checkpoint(os.path.join(workdir, "checkpoints"))
  assert step == 2 and meta["weights_from"].startswith("torchvision weights")
  source = {**variables, "params": variables["params"]}
  for params, stats in ((state["params"], state["batch_stats"]),
                        (state["ema_params"], state["ema_batch_stats"])):  # EMA: from the source
    assert_bit_identical(params, source["params"], skip=lambda key: key.startswith("fc/"))
    assert_bit_identical(stats, source["batch_stats"])
  assert state["params"]["fc"]["kernel"].shape == (4, 2)

  # the source is now another file: the resumed run does not read it
  save_file(flax_resnet.to_torchvision(source_variables(7, seed=9), "resnet18", widths=WIDTHS),
            path)
  config.num_train_steps = 4
  flax_resnet.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "resuming at step 2" in out and "config.init_from is not read" in out
  step, state, meta = read_checkpoint(os.path.join(workdir, "checkpoints"))
  assert step == 4 and meta["weights_from"].startswith("torchvision weights")
  assert_bit_identical(state["params"], source["params"], skip=lambda key: key.startswith("fc/"))
