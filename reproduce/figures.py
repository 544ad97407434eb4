"""The report's figures, drawn from the runs' metrics.jsonl and results.json rows:
training error (thin, solid) and test error (bold, dashed) against iterations, as in the
paper's Figures 4 and 6, and the layer responses of Figure 7."""

from __future__ import annotations

import json
import os

# (figure file, title, panels: (panel title, run names))
CURVES = (
    ("depth_study.png", "Fashion-MNIST, CIFAR-style nets (the paper's Figure 6)",
     (("plain", ("cifar_plain20", "cifar_plain32", "cifar_plain44", "cifar_plain56",
                 "cifar_plain110")),
      ("ResNet (option A)", ("cifar_resnet20", "cifar_resnet32", "cifar_resnet44",
                             "cifar_resnet56", "cifar_resnet110")))),
    ("imagenet_style.png", "Fashion-MNIST at 56x56, ImageNet-style nets (the paper's Figure 4)",
     (("plain", ("plain18", "plain34")), ("ResNet (option A)", ("resnet18_A", "resnet34_A")),
      ("ResNet-34 shortcuts", ("resnet34_A", "resnet34_B", "resnet34_C")))),
)
RESPONSES = ("cifar_plain20", "cifar_plain56", "cifar_resnet20", "cifar_resnet56",
             "cifar_resnet110")


def _series(records, key):
  points = [(r["step"], 100 * (1 - r[key])) for r in records if key in r]
  return [p[0] for p in points], [p[1] for p in points]


def _records(runs_dir, name):
  path = os.path.join(runs_dir, name, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def draw_all(rows: list[dict], runs_dir: str, out_dir: str) -> list[str]:
  """Writes every figure that has at least one finished run; returns their paths."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  written = []
  for filename, title, panels in CURVES:
    runs = {n: _records(runs_dir, n) for _, names in panels for n in names}
    if not any(runs.values()):
      continue
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (panel, names) in zip(axes[0], panels):
      for i, name in enumerate(names):
        if runs[name] is None:
          continue
        steps, train = _series(runs[name], "train_accuracy")
        ax.plot(steps, train, color=f"C{i}", lw=0.8, label=f"{name} train")
        steps, test = _series(runs[name], "eval_accuracy")
        ax.plot(steps, test, color=f"C{i}", lw=2, ls="--", marker=".", label=f"{name} test")
      ax.set(title=panel, xlabel="iterations", ylabel="error (%)")
      ax.grid(alpha=0.3)
      if any(runs[name] for name in names):
        ax.legend(fontsize=7)
      else:
        ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    written.append(os.path.join(out_dir, filename))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
  measured = {r["name"]: r["layer_responses"] for r in rows if r["name"] in RESPONSES}
  if measured:
    fig, (by_layer, by_size) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in RESPONSES:
      if name in measured:
        stds = measured[name]
        style = "--" if "plain" in name else "-"
        by_layer.plot(range(1, len(stds) + 1), stds, style, label=name)
        by_size.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, label=name)
    by_layer.set(title="layer index (original)", xlabel="layer index", ylabel="std")
    by_size.set(title="layer index (sorted by magnitude)", xlabel="layer index", ylabel="std")
    for ax in (by_layer, by_size):
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
    fig.suptitle("Std of 3x3 layer responses after BN, before ReLU/addition (Figure 7)")
    fig.tight_layout()
    written.append(os.path.join(out_dir, "layer_responses.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
  return written
