"""reproduce/run.py: runs the studies' configs with train.py, skips finished runs, writes
results.json, the runs' metrics and the figures."""

import json
import os
import subprocess
import sys

import pytest

from train_utils import ROOT, train_env

pytestmark = pytest.mark.slow  # starts train.py or trains: `pytest -m 'not slow'` skips it


def test_configs_of_the_studies_share_the_papers_recipe():
  from configs import reproduce
  from flax_resnet.config import check_config
  depth = [reproduce.get_config(n) for n in reproduce.DEPTH_NETS]
  imagenet_style = [reproduce.get_config(n) for n in reproduce.IMAGENET_STYLE_NETS]
  for config in depth + imagenet_style:
    check_config(config)
    assert (config.batch_size, config.learning_rate, config.momentum, config.weight_decay,
            config.weight_decay_on, config.seed) == (128, 0.1, 0.9, 1e-4, "all", 0)
  # the paper's lr per image: 0.1 per 128 on CIFAR, 0.1 per 256 on ImageNet
  assert {c.lr_reference_batch_size for c in depth} == {128}
  assert {c.lr_reference_batch_size for c in imagenet_style} == {256}
  # shortcut "": the model's own, option A for the CIFAR nets
  assert {(c.num_epochs, c.lr_decay_epochs, c.shortcut) for c in depth} == {
      (reproduce.DEPTH_EPOCHS, (0.5 * reproduce.DEPTH_EPOCHS, 0.75 * reproduce.DEPTH_EPOCHS),
       "")}
  assert reproduce.get_config("resnet34_C").shortcut == "C"
  assert reproduce.get_config("plain18").image_size == reproduce.IMAGENET_STYLE_SIZE
  for bad in ("cifar_resnet21", "resnet18_A-seed", "resnet18_A-seed01", "resnet18_A-seedx"):
    with pytest.raises(ValueError, match="unknown run"):
      reproduce.get_config(bad)


def test_the_runs_are_three_seeds_of_the_deciding_nets_and_one_of_the_rest():
  from configs import reproduce
  assert reproduce.get_config("resnet18_A-seed2").seed == 2
  seeds = {}
  for run in reproduce.RUNS:
    net, seed = reproduce.parse_run(run)
    seeds.setdefault(net, []).append(seed)
  assert {net for net, s in seeds.items() if s == [0, 1, 2]} == set(reproduce.SEEDED_NETS)
  assert set(seeds) == set(reproduce.DEPTH_ENDPOINTS + reproduce.IMAGENET_STYLE_NETS)
  assert all(s in ([0], [0, 1, 2]) for s in seeds.values())


def test_round_ones_recipe_is_kept():
  from configs import reproduce, reproduce_round_one
  for net in reproduce.NETS:
    one, two = reproduce_round_one.get_config(net), reproduce.get_config(net)
    changed = {k for k in one.keys() if one[k] != two[k]}
    expected = {"weight_decay_on"}
    if net in reproduce.IMAGENET_STYLE_NETS:
      expected.add("lr_reference_batch_size")
    else:
      expected |= {"num_epochs", "lr_decay_epochs"}
    assert changed == expected, net
    assert (one.weight_decay_on, one.lr_reference_batch_size) == ("kernels", 128)
  assert reproduce_round_one.get_config("cifar_resnet56").num_epochs == 6


def test_runner_trains_skips_finished_runs_and_reports(tmp_path, fashion_mnist_data_dir):
  out = tmp_path / "report"
  out.mkdir()
  command = [sys.executable, "reproduce/run.py", f"--workdir={tmp_path / 'runs'}",
             f"--out={out}", "--only=cifar_resnet20,cifar_plain20",
             f"--data_dir={fashion_mnist_data_dir}",
             "--flag=--config.num_train_steps=4", "--flag=--config.log_every_steps=2",
             "--flag=--config.eval_examples=1000", "--flag=--config.plot=False"]
  first = subprocess.run(command, cwd=ROOT, env=train_env(devices=2), capture_output=True,
                         text=True, timeout=900)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
  results = json.loads((out / "results.json").read_text())["runs"]
  assert [r["name"] for r in results] == ["cifar_plain20", "cifar_resnet20"]
  for row in results:
    assert row["steps"] == 4 and row["image_size"] == 28
    assert 0 <= row["train_error"] <= 1 and 0 <= row["test_error"] <= 1
    assert len(row["layer_responses"]) == 19 and row["mean_layer_response"] > 0
    assert row["initial_loss"] > 0 and row["final_kernel_norm"] > 0
    assert row["initial_kernel_norm"] != row["final_kernel_norm"]  # the steps moved them
    assert (out / "runs" / row["name"] / "metrics.jsonl").exists()
  assert results[0]["shortcut"] is None and results[1]["shortcut"] == "A"
  # The paper's nets at initialization: each residual block adds to its shortcut, so
  # ResNet-20 starts with larger logits than plain-20, whose BatchNorms reset the scale.
  assert results[1]["initial_logit_std"] > 2 * results[0]["initial_logit_std"]
  from flax_resnet import count_params, create_model
  one_channel = count_params(create_model("cifar_resnet20", num_classes=10), (1, 28, 28, 1))
  assert results[0]["params"] == results[1]["params"] == one_channel  # option A: no parameters
  assert sorted(os.listdir(out / "figures")) == ["depth_study.png", "layer_responses.png"]
  second = subprocess.run(command, cwd=ROOT, env=train_env(devices=2), capture_output=True,
                          text=True, timeout=900)
  assert second.returncode == 0, second.stderr[-2000:]
  assert second.stdout.count("finished, skipped") == 2


def test_the_training_error_weights_each_record_by_the_steps_it_covers():
  sys.path.insert(0, ROOT)
  from reproduce.run import steps_weighted_mean
  records = [{"step": 25, "train_accuracy": 0.5}, {"step": 30, "eval_accuracy": 0.1},
             {"step": 50, "train_accuracy": 0.6}, {"step": 53, "train_accuracy": 0.9},
             {"step": 75, "train_accuracy": 0.7}]
  # steps 41-50 at 0.6, 51-53 at 0.9, 54-75 at 0.7
  assert steps_weighted_mean(records, "train_accuracy", 40) == pytest.approx(
      (10 * 0.6 + 3 * 0.9 + 22 * 0.7) / 35)
  assert steps_weighted_mean(records, "train_accuracy", 0) == pytest.approx(
      (25 * 0.5 + 25 * 0.6 + 3 * 0.9 + 22 * 0.7) / 75)
  with pytest.raises(ValueError):
    steps_weighted_mean(records, "train_accuracy", 75)
