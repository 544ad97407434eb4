"""Training curves like the paper's figures: loss and error (%) against steps, train and eval.

    python -m flax_resnet.plotting WORKDIR [WORKDIR ...] --out=compare.png

overlays several runs (e.g. cifar_plain20 against cifar_resnet20) in one picture.
"""

from __future__ import annotations

import argparse
import io

from flax_resnet import fs
from flax_resnet.reporting import read_metrics


def _series(records, key):
  points = [(r["step"], r[key]) for r in records if key in r]
  return [p[0] for p in points], [p[1] for p in points]


def plot_runs(workdirs: list[str], out: str, labels: list[str] | None = None) -> str:
  """Draws each workdir's metrics.jsonl into one PNG at `out` (local or gs://); returns `out`."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = labels or [fs.user_path(w).name for w in workdirs]
  fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(12, 4.5))
  for i, (workdir, label) in enumerate(zip(workdirs, labels)):
    records = read_metrics(workdir)
    color = f"C{i}"
    steps, loss = _series(records, "train_loss")
    ax_loss.plot(steps, loss, color=color, alpha=0.6, label=f"{label} train")
    steps, loss = _series(records, "eval_loss")
    ax_loss.plot(steps, loss, color=color, lw=2, marker=".", label=f"{label} eval")
    steps, acc = _series(records, "train_accuracy")
    ax_err.plot(steps, [100 * (1 - a) for a in acc], color=color, alpha=0.6, ls="--",
                label=f"{label} train")
    steps, acc = _series(records, "eval_accuracy")
    ax_err.plot(steps, [100 * (1 - a) for a in acc], color=color, lw=2, marker=".",
                label=f"{label} eval")
  ax_loss.set(xlabel="step", ylabel="cross-entropy loss", yscale="log", title="loss")
  ax_err.set(xlabel="step", ylabel="top-1 error (%)", title="error")
  for ax in (ax_loss, ax_err):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  png = io.BytesIO()  # drawn in memory, written whole: `out` may be gs://...
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  fs.user_path(out).write_bytes(png.getvalue())
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", help="work directories holding metrics.jsonl")
  parser.add_argument("--out", default="curves.png", help="PNG to write")
  parser.add_argument("--labels", nargs="*", help="a legend label per workdir")
  args = parser.parse_args(argv)
  for w in args.workdirs:
    if not (fs.user_path(w) / "metrics.jsonl").exists():
      parser.error(f"{w} has no metrics.jsonl; is it a train.py --workdir?")
  print(plot_runs(args.workdirs, args.out, args.labels))


if __name__ == "__main__":
  main()
