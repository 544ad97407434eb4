"""The paper's claims, each decided from the runs by one rule, the same for every claim.

A claim is a comparison on one measure of the finished runs: the paper expects net LOW below
net HIGH. Over each net's finished seeds,

    d  = mean(HIGH) - mean(LOW)
    se = sqrt(s_low**2 / n_low + s_high**2 / n_high)

where s is a net's sample standard deviation over its n seeds; a net trained with one seed
takes the pooled standard deviation of its study's nets that have several seeds (the spread
that the seed alone makes). The verdict:

    reproduced       d > 2 se
    not reproduced   d < -2 se    (the opposite order, beyond the seeds' spread)
    within noise     otherwise
    pending          while a run of either net is not finished (the figures so far are shown)

The measures: `train_error` and `test_error` as in results.json, `mean_layer_response`, and
`first_epoch_train_error` (the training error over the first epoch's steps, for "converges
faster"). Three seeds make se a rough figure; the rule says what the data can tell apart at
that, nothing finer.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Claim:
  number: int            # the claim of reproduce/README.md it belongs to
  statement: str
  measure: str
  low: str               # the net the paper expects lower on the measure
  high: str
  paper: str             # the paper's evidence for it


CLAIMS = (
    Claim(1, "a deeper plain net trains worse", "train_error", "cifar_plain20", "cifar_plain56",
          "Figure 6: plain-56 above plain-20"),
    Claim(1, "a deeper residual net trains better", "train_error", "cifar_resnet56",
          "cifar_resnet20", "Figure 6: ResNet-56 below ResNet-20"),
    Claim(1, "a deeper residual net tests better", "test_error", "cifar_resnet56",
          "cifar_resnet20", "6.97% against 8.75% (CIFAR-10)"),
    Claim(1, "at 56 layers the residual net trains better than the plain one", "train_error",
          "cifar_resnet56", "cifar_plain56", "Figure 6"),
    Claim(1, "at 56 layers the residual net tests better than the plain one", "test_error",
          "cifar_resnet56", "cifar_plain56", "Figure 6"),
    Claim(2, "residual layers respond less than plain ones (20 layers)", "mean_layer_response",
          "cifar_resnet20", "cifar_plain20", "Figure 7"),
    Claim(2, "residual layers respond less than plain ones (56 layers)", "mean_layer_response",
          "cifar_resnet56", "cifar_plain56", "Figure 7"),
    Claim(2, "the deeper residual net responds less", "mean_layer_response", "cifar_resnet56",
          "cifar_resnet20", "Figure 7"),
    Claim(3, "plain-34 trains worse than plain-18", "train_error", "plain18", "plain34",
          "Figure 4: higher training error throughout"),
    Claim(3, "plain-34 tests worse than plain-18", "test_error", "plain18", "plain34",
          "28.54% against 27.94% top-1"),
    Claim(3, "ResNet-34 tests better than ResNet-18", "test_error", "resnet34_A", "resnet18_A",
          "25.03% against 27.88% top-1"),
    Claim(3, "ResNet-34 tests better than plain-34", "test_error", "resnet34_A", "plain34",
          "25.03% against 28.54% top-1"),
    Claim(3, "ResNet-18 converges faster than plain-18", "first_epoch_train_error",
          "resnet18_A", "plain18", "Figure 4: lower error early, similar at the end"),
    Claim(4, "option B tests better than option A", "test_error", "resnet34_B", "resnet34_A",
          "24.52% against 25.03% top-1"),
    Claim(4, "option C tests better than option B", "test_error", "resnet34_C", "resnet34_B",
          "24.19% against 24.52% top-1"),
)

PERCENT = ("train_error", "test_error", "first_epoch_train_error")


def mean(values):
  return sum(values) / len(values)


def sample_std(values):
  """The sample standard deviation; None for one value."""
  if len(values) < 2:
    return None
  center = mean(values)
  return math.sqrt(sum((v - center) ** 2 for v in values) / (len(values) - 1))


def pooled_std(by_net: dict[str, list[float]]) -> float | None:
  """The pooled sample standard deviation of the nets with several values (None if none)."""
  seeded = [v for v in by_net.values() if len(v) > 1]
  dof = sum(len(v) - 1 for v in seeded)
  if not dof:
    return None
  return math.sqrt(sum((len(v) - 1) * sample_std(v) ** 2 for v in seeded) / dof)


def decide(claim: Claim, values: dict[str, list[float]], pooled: float | None,
           finished: bool) -> dict:
  """The verdict on CLAIM from each net's values over its finished seeds (VALUES), the pooled
  standard deviation of the study's seeded nets, and whether every run of both nets is
  finished."""
  low, high = values.get(claim.low, []), values.get(claim.high, [])
  out = {"claim": claim, "low": low, "high": high, "d": None, "se": None}
  if low and high:
    s_low, s_high = sample_std(low) or pooled, sample_std(high) or pooled
    out["d"] = mean(high) - mean(low)
    if s_low is not None and s_high is not None:
      out["se"] = math.sqrt(s_low ** 2 / len(low) + s_high ** 2 / len(high))
  if not finished or out["se"] is None:
    out["verdict"] = "pending"
  elif out["d"] > 2 * out["se"]:
    out["verdict"] = "reproduced"
  elif out["d"] < -2 * out["se"]:
    out["verdict"] = "not reproduced"
  else:
    out["verdict"] = "within noise"
  return out


def _figure(measure: str, x: float) -> str:
  return f"{100 * x:.2f}%" if measure in PERCENT else f"{x:.3f}"


def _net(measure: str, net: str, values: list[float]) -> str:
  if not values:
    return f"`{net}` not run yet"
  spread = sample_std(values)
  sd = "" if spread is None else f" ± {_figure(measure, spread).rstrip('%')}"
  seeds = "1 seed" if len(values) == 1 else f"{len(values)} seeds"
  return f"`{net}` {_figure(measure, mean(values))}{sd} ({seeds})"


def table(decisions: list[dict]) -> str:
  """The claims table: one row per claim, the paper's evidence, ours, and the verdict."""
  lines = ["| claim | the paper | ours, the net expected lower first: mean ± sample std "
           "| difference (2 se) | verdict |", "|---|---|---|---|---|"]
  for x in decisions:
    c = x["claim"]
    ours = f"{_net(c.measure, c.low, x['low'])} below {_net(c.measure, c.high, x['high'])}"
    if x["d"] is None:
      diff = "-"
    else:
      scale = f" ({_figure(c.measure, 2 * x['se'])})" if x["se"] is not None else ""
      diff = f"{_figure(c.measure, x['d'])}{scale}"
    measure = c.measure.replace("_", " ")
    lines.append(f"| {c.number}. {c.statement} ({measure}) | {c.paper} | {ours} | {diff} | "
                 f"**{x['verdict']}** |")
  return "\n".join(lines) + "\n"
