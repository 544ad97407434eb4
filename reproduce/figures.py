"""The report's figures, drawn from the runs' metrics.jsonl and results.json rows, in the
paper's conventions: training error (thin, dashed) and test error (bold, solid) against
iterations on a fixed error range (Figures 4 and 6), and the layer responses per layer in
network order and sorted by magnitude (Figure 7), on a log axis.

    python reproduce/figures.py [--out=DIR]    # redraws DIR/figures/ from DIR's runs/ and results.json
"""

from __future__ import annotations

import argparse
import json
import os

TRAIN_STYLE = {"ls": "--", "lw": 0.8}  # the paper's thin dashed training error
TEST_STYLE = {"ls": "-", "lw": 2.2}    # and its bold solid test error

# (figure file, title, error range in %, panels: (panel title, run names)). The error range is
# fixed and clips the first steps, so that the runs' differences show: the paper's Figure 6
# plots 0-20%; the ImageNet-style runs start far higher and end between 13 and 30%.
CURVES = (
    ("depth_study.png", "Fashion-MNIST, CIFAR-style nets (the paper's Figure 6)", (0, 20),
     (("plain", ("cifar_plain20", "cifar_plain32", "cifar_plain44", "cifar_plain56",
                 "cifar_plain110")),
      ("ResNet (option A)", ("cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
                             "cifar_resnet56", "cifar_resnet110")))),
    ("imagenet_style.png", "Fashion-MNIST at 56x56, ImageNet-style nets (the paper's Figure 4)",
     (0, 60),
     (("plain", ("plain18", "plain34")), ("ResNet (option A)", ("resnet18_A", "resnet34_A")),
      ("ResNet-34 shortcuts", ("resnet34_A", "resnet34_B", "resnet34_C")))),
)
RESPONSES = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56",
             "cifar_resnet110")
# Log axis: plain-56's first layers reach 20, the other layers stay between 0.7 and 2.
RESPONSE_RANGE = (0.6, 25)
RESPONSE_TICKS = (0.6, 0.8, 1, 1.5, 2, 3, 5, 10, 20)


def _series(records, key):
  points = [(r["step"], 100 * (1 - r[key])) for r in records if key in r]
  return [p[0] for p in points], [p[1] for p in points]


def read_run(runs_dir: str, name: str) -> list[dict] | None:
  """The records of RUNS_DIR/NAME/metrics.jsonl (read as the library reads it); None where
  the run has none."""
  from flax_resnet.reporting import read_metrics
  run_dir = os.path.join(runs_dir, name)
  return read_metrics(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else None


def _style_key():
  from matplotlib.lines import Line2D
  return [Line2D([], [], color="k", label="training error", **TRAIN_STYLE),
          Line2D([], [], color="k", label="test error", **TEST_STYLE)]


def curves_figure(title: str, error_range, panels, runs: dict):
  """One figure of error curves, a panel per (panel title, run names); runs: name -> records
  (None: not run)."""
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
  for ax, (panel, names) in zip(axes[0], panels):
    for i, name in enumerate(names):
      if runs.get(name) is None:
        continue
      steps, train = _series(runs[name], "train_accuracy")
      ax.plot(steps, train, color=f"C{i}", **TRAIN_STYLE)
      steps, test = _series(runs[name], "eval_accuracy")
      ax.plot(steps, test, color=f"C{i}", marker=".", label=name, **TEST_STYLE)
    ax.set(title=panel, xlabel="iterations", ylabel="error (%)", ylim=error_range)
    ax.grid(alpha=0.3)
    if any(runs.get(name) for name in names):
      handles, _ = ax.get_legend_handles_labels()
      ax.legend(handles=handles + _style_key(), fontsize=7)
    else:
      ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes)
  fig.suptitle(f"{title}; error axis {error_range[0]}-{error_range[1]}%")
  fig.tight_layout()
  return fig


def responses_figure(measured: dict):
  """Figure 7: each net's layer responses (name -> stds), in network order and sorted."""
  import matplotlib.pyplot as plt
  fig, (by_layer, by_size) = plt.subplots(2, 1, figsize=(8, 7))
  for i, name in enumerate(RESPONSES):
    if name in measured:
      stds = measured[name]
      style = {"color": f"C{i}", "ls": "--" if "plain" in name else "-", "label": name}
      by_layer.plot(range(1, len(stds) + 1), stds, **style)
      by_size.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), **style)
  by_layer.set(xlabel="layer index (original)")
  by_size.set(xlabel="layer index (sorted by magnitude)")
  for ax in (by_layer, by_size):
    ax.set(ylabel="std (log scale)", yscale="log", ylim=RESPONSE_RANGE)
    ax.set_yticks(RESPONSE_TICKS, [f"{t:g}" for t in RESPONSE_TICKS])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Std of 3x3 layer responses after BN, before ReLU/addition (Figure 7)")
  fig.tight_layout()
  return fig


def draw_all(rows: list[dict], runs_dir: str, out_dir: str) -> list[str]:
  """Writes every figure that has at least one finished run; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  figures = []
  for filename, title, error_range, panels in CURVES:
    runs = {n: read_run(runs_dir, n) for _, names in panels for n in names}
    if any(runs.values()):
      figures.append((filename, curves_figure(title, error_range, panels, runs)))
  measured = {r["name"]: r["layer_responses"] for r in rows if r["name"] in RESPONSES}
  if measured:
    figures.append(("layer_responses.png", responses_figure(measured)))
  written = []
  for filename, fig in figures:
    written.append(os.path.join(out_dir, filename))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
  return written


def main(argv=None):
  here = os.path.dirname(os.path.abspath(__file__))
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=here, help="the folder of results.json, runs/ and figures/")
  args = p.parse_args(argv)
  with open(os.path.join(args.out, "results.json")) as f:
    rows = json.load(f)["runs"]
  for path in draw_all(rows, os.path.join(args.out, "runs"), os.path.join(args.out, "figures")):
    print(path)


if __name__ == "__main__":
  main()
