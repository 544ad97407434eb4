"""reproduce/: run.py runs the studies' configs with train.py, skips finished runs, writes
results.json, the runs' metrics and the figures; figures.py draws them in the paper's
conventions."""

import json
import math
import os
import subprocess
import sys

import pytest

from train_utils import ROOT, train_env


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


@pytest.mark.slow  # starts train.py: `pytest -m 'not slow'` skips it
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


def _write_run(runs_dir, name, train_errors, test_errors, every=25, epoch=100):
  """A tiny run's metrics.jsonl: a training record every `every` steps, an evaluation at the
  end of every `epoch` steps."""
  records = []
  for i, error in enumerate(train_errors):
    records.append({"step": (i + 1) * every, "train_accuracy": 1 - error, "train_loss": 1.0})
  for i, error in enumerate(test_errors):
    records.append({"step": (i + 1) * epoch, "eval_accuracy": 1 - error})
  records.sort(key=lambda r: r["step"])
  (runs_dir / name).mkdir(parents=True)
  (runs_dir / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_figures_draw_training_thin_dashed_test_bold_solid_on_fixed_axes(tmp_path):
  sys.path.insert(0, ROOT)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from reproduce import figures
  runs_dir = tmp_path / "runs"
  _write_run(runs_dir, "cifar_plain20", [0.9, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1, 0.09], [0.4, 0.1])
  _write_run(runs_dir, "cifar_resnet20", [0.8, 0.4, 0.2, 0.1, 0.09, 0.08, 0.07, 0.06],
             [0.3, 0.08])
  rows = [{"name": "cifar_plain20", "layer_responses": [20.0, 6.0, 1.2, 1.0]},
          {"name": "cifar_resnet20", "layer_responses": [1.1, 0.8, 1.3, 1.0]}]
  written = figures.draw_all(rows, str(runs_dir), str(tmp_path / "figures"))
  assert sorted(os.path.basename(w) for w in written) == ["depth_study.png",
                                                           "layer_responses.png"]
  assert all(os.path.getsize(w) > 0 for w in written)

  filename, title, error_range, panels = figures.CURVES[0]
  runs = {n: figures.read_run(str(runs_dir), n) for _, names in panels for n in names}
  fig = figures.curves_figure(title, error_range, panels, runs)
  plain, residual = fig.axes
  for ax, name in ((plain, "cifar_plain20"), (residual, "cifar_resnet20")):
    assert ax.get_ylim() == (0, 20)  # the paper's Figure 6 range, whatever the first steps
    train, test = ax.get_lines()
    assert list(train.get_xdata()) == [25, 50, 75, 100, 125, 150, 175, 200]
    assert list(test.get_xdata()) == [100, 200]
    assert (train.get_linestyle(), test.get_linestyle()) == ("--", "-")
    assert train.get_linewidth() < 1 and test.get_linewidth() >= 2
    assert train.get_color() == test.get_color()  # one color per net
    assert test.get_label() == name
  plt.close(fig)
  assert [c[2] for c in figures.CURVES] == [(0, 20), (0, 60)]

  fig = figures.responses_figure({r["name"]: r["layer_responses"] for r in rows})
  by_layer, by_size = fig.axes
  for ax in (by_layer, by_size):
    assert ax.get_yscale() == "log"
    assert ax.get_ylim() == pytest.approx(figures.RESPONSE_RANGE)
  plain20 = [l for l in by_layer.get_lines() if l.get_label() == "cifar_plain20"][0]
  assert list(plain20.get_ydata()) == [20.0, 6.0, 1.2, 1.0]  # network order
  resnet20 = [l for l in by_size.get_lines() if l.get_label() == "cifar_resnet20"][0]
  assert list(resnet20.get_ydata()) == [1.3, 1.1, 1.0, 0.8]  # sorted by magnitude
  assert plain20.get_linestyle() == "--" and resnet20.get_linestyle() == "-"
  plt.close(fig)


def test_the_reports_tables_are_made_from_results_json_and_the_runs_metrics():
  sys.path.insert(0, ROOT)
  from reproduce import figures, report
  for folder in ("reproduce", "reproduce/round_one"):
    made = {**report.tables(os.path.join(ROOT, folder)),
            **report.first_steps_table(os.path.join(ROOT, folder))}
    with open(os.path.join(ROOT, folder, "README.md")) as f:
      marked = report.marked_tables(f.read())
    assert set(marked) == set(made) and marked == made, (
        f"{folder}/README.md's tables differ from its results.json and runs/: run "
        f"`python reproduce/report.py --out={folder}`")
  folder = os.path.join(ROOT, "reproduce", "round_one")
  # results.json's train_error is the last epoch's steps-weighted error of the run's metrics
  with open(os.path.join(folder, "results.json")) as f:
    rows = json.load(f)["runs"]
  for row in rows:
    records = figures.read_run(os.path.join(folder, "runs"), row["name"])
    assert report.epochs(records)[-1]["train_error"] == pytest.approx(row["train_error"])


def test_epochs_end_at_the_evaluations_and_weight_records_by_the_steps_they_cover():
  sys.path.insert(0, ROOT)
  from reproduce import report
  # steps 41-50 missing from the records (an evaluation's flush that wrote nothing)
  records = [{"step": 20, "train_accuracy": 0.5, "train_loss": 2.0},
             {"step": 40, "train_accuracy": 0.7, "train_loss": 1.0},
             {"step": 50, "eval_accuracy": 0.75},
             {"step": 60, "train_accuracy": 0.8, "train_loss": 0.5},
             {"step": 100, "train_accuracy": 0.9, "train_loss": 0.4},
             {"step": 100, "eval_accuracy": 0.85}]
  by_epoch = report.epochs(records)
  assert [e["test_error"] for e in by_epoch] == pytest.approx([0.25, 0.15])
  assert [e["train_error"] for e in by_epoch] == pytest.approx(
      [1 - (20 * 0.5 + 20 * 0.7) / 40, 1 - (10 * 0.8 + 40 * 0.9) / 50])
  assert report.mean_loss(records, 1, 20) == pytest.approx(2.0)
  assert report.mean_loss(records, 21, 40) == pytest.approx(1.0)
  table = report.epochs_table([("`x`", records)])
  assert table.splitlines()[-1] == "| `x` | 40.0%, 12.0% | 25.0%, 15.0% | 2.00 / 1.00 |"
  text = "a\n<!-- table: x -->\nold\n<!-- end table -->\nb\n"
  assert report.fill(text, {"x": table}) == f"a\n<!-- table: x -->\n{table}<!-- end table -->\nb\n"
  with pytest.raises(SystemExit, match="y"):
    report.fill(text.replace("table: x", "table: y"), {"x": table})


def test_nets_of_several_seeds_get_their_mean_and_spread(tmp_path):
  sys.path.insert(0, ROOT)
  from reproduce import report
  row = dict(model="x", shortcut="A", image_size=28, steps=50, params=1, mean_layer_response=1.0,
             layer_responses=[1.0], initial_logit_std=1.0, initial_loss=2.3,
             initial_kernel_norm=1.0, final_kernel_norm=1.0, wall_seconds=1, machine="m")
  rows = [dict(row, name=name, seed=seed, train_error=train, test_error=test)
          for name, seed, train, test in (("cifar_resnet20", 0, 0.10, 0.20),
                                          ("cifar_resnet20-seed1", 1, 0.12, 0.22),
                                          ("cifar_resnet20-seed2", 2, 0.14, 0.27),
                                          ("plain18", 0, 0.3, 0.3))]
  (tmp_path / "results.json").write_text(json.dumps({"runs": rows}))
  for r in rows:
    (tmp_path / "runs" / r["name"]).mkdir(parents=True)
    (tmp_path / "runs" / r["name"] / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in (
        {"step": 25, "train_accuracy": 0.5, "train_loss": 1.0},
        {"step": 50, "train_accuracy": 0.6, "train_loss": 0.8, "eval_accuracy": 0.7})))
  made = report.tables(str(tmp_path))
  assert "imagenet_style_seeds" not in made  # plain18: one seed
  lines = made["depth_seeds"].splitlines()
  assert len(lines) == 3
  # train 10, 12, 14%: mean 12%, sample std 2; test 20, 22, 27%: mean 23%, std 3.61
  assert lines[2] == ("| `cifar_resnet20` | 0, 1, 2 | 12.00% ± 2.00 (10.00%-14.00%) | "
                      "23.00% ± 3.61 (20.00%-27.00%) |")
  assert len(made["depth_runs"].splitlines()) == 2 + 3  # one row per seed


def test_each_claim_is_decided_by_the_difference_against_twice_its_standard_error():
  sys.path.insert(0, ROOT)
  from reproduce import claims
  claim = claims.Claim(9, "x", "test_error", "low", "high", "paper")
  low = [0.10, 0.12, 0.14]  # mean 0.12, sample std 0.02
  # every HIGH below has sample std 0.02 too: se = sqrt(2 * 0.02**2 / 3) = 0.0163, 2 se = 0.0327
  for high, d, verdict in (([0.15, 0.17, 0.19], 0.05, "reproduced"),
                           ([0.13, 0.15, 0.17], 0.03, "within noise"),
                           ([0.11, 0.13, 0.15], 0.01, "within noise"),
                           ([0.06, 0.08, 0.10], -0.04, "not reproduced")):
    decision = claims.decide(claim, {"low": low, "high": high}, None, finished=True)
    assert decision["d"] == pytest.approx(d)
    assert decision["se"] == pytest.approx(math.sqrt(2 * 0.02 ** 2 / 3))
    assert decision["verdict"] == verdict, high
  # a net of one seed takes the pooled spread; an unfinished comparison stays pending
  one = claims.decide(claim, {"low": low, "high": [0.20]}, 0.03, finished=True)
  assert one["se"] == pytest.approx(math.sqrt(0.02 ** 2 / 3 + 0.03 ** 2))
  assert one["verdict"] == "reproduced"  # d = 0.08 > 2 * 0.0346
  assert claims.decide(claim, {"low": low, "high": [0.20]}, None, True)["verdict"] == "pending"
  assert claims.decide(claim, {"low": low, "high": high}, None, False)["verdict"] == "pending"
  assert claims.pooled_std({"a": [1.0, 3.0], "b": [2.0, 2.0, 2.0], "c": [7.0]}) == (
      pytest.approx(math.sqrt(2 / 3)))  # (1 * 2 + 2 * 0) / 3 degrees of freedom


def test_the_claims_table_decides_from_the_finished_runs_and_says_what_is_missing(tmp_path):
  sys.path.insert(0, ROOT)
  from configs import reproduce as studies
  from reproduce import report
  row = dict(model="x", shortcut="A", image_size=56, steps=50, params=1, mean_layer_response=1.0,
             layer_responses=[1.0], initial_logit_std=1.0, initial_loss=2.3,
             initial_kernel_norm=1.0, final_kernel_norm=1.0, wall_seconds=1, machine="m")
  # the ImageNet-style study complete, the depth study not started; test errors by net:
  # plain18 30 +- 1, resnet18_A 29 +- 1 (3 seeds each), plain34 40, resnet34_A/B/C 20, 19.9, 30
  test_error = {"plain18": 0.30, "resnet18_A": 0.29, "plain34": 0.40, "resnet34_A": 0.20,
                "resnet34_B": 0.199, "resnet34_C": 0.30}
  rows = []
  for name in studies.IMAGENET_STYLE_RUNS:
    net, seed = studies.parse_run(name)
    error = test_error[net] + 0.01 * (seed - 1) * (net in studies.SEEDED_NETS)
    rows.append(dict(row, name=name, seed=seed, train_error=error, test_error=error))
    first_epoch_accuracy = 0.4 if net == "plain18" else 0.6  # resnet18_A converges faster
    (tmp_path / "runs" / name).mkdir(parents=True)
    (tmp_path / "runs" / name / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in (
        {"step": 25, "train_accuracy": first_epoch_accuracy, "train_loss": 1.0},
        {"step": 25, "eval_accuracy": 0.7},
        {"step": 50, "train_accuracy": 0.8, "train_loss": 0.8},
        {"step": 50, "eval_accuracy": 0.7})))
  (tmp_path / "results.json").write_text(json.dumps({"runs": rows}))
  made = report.tables(str(tmp_path))
  assert made["progress"].startswith("10 of the 22 runs are finished; still to run: "
                                     "`cifar_plain20`, `cifar_plain20-seed1`")
  verdicts = {line.split(" | ")[0][2:]: line.split(" | ")[-1][:-2]
              for line in made["claims"].splitlines()[2:]}
  # pooled std of the seeded nets: 0.01; one seed against one seed: 2 se = 2 * sqrt(2) * 0.01
  assert verdicts == {
      "1. a deeper plain net trains worse (train error)": "**pending**",
      "1. a deeper residual net trains better (train error)": "**pending**",
      "1. a deeper residual net tests better (test error)": "**pending**",
      "1. at 56 layers the residual net trains better than the plain one (train error)":
          "**pending**",
      "1. at 56 layers the residual net tests better than the plain one (test error)":
          "**pending**",
      "2. residual layers respond less than plain ones (20 layers) (mean layer response)":
          "**pending**",
      "2. residual layers respond less than plain ones (56 layers) (mean layer response)":
          "**pending**",
      "2. the deeper residual net responds less (mean layer response)": "**pending**",
      "3. plain-34 trains worse than plain-18 (train error)": "**reproduced**",
      "3. plain-34 tests worse than plain-18 (test error)": "**reproduced**",
      "3. ResNet-34 tests better than ResNet-18 (test error)": "**reproduced**",
      "3. ResNet-34 tests better than plain-34 (test error)": "**reproduced**",
      "3. ResNet-18 converges faster than plain-18 (first epoch train error)": "**reproduced**",
      "4. option B tests better than option A (test error)": "**within noise**",
      "4. option C tests better than option B (test error)": "**not reproduced**"}
  assert "`plain18` 30.00% ± 1.00 (3 seeds) below `plain34` 40.00% (1 seed)" in made["claims"]
  assert "`cifar_plain20` not run yet" in made["claims"]
