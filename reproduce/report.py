"""The report's tables, made from results.json and the runs' metrics, so that the numbers
in README.md are the data's:

    python reproduce/report.py [--out=DIR]    # rewrites the tables in DIR/README.md

README.md marks each table with `<!-- table: NAME -->` and `<!-- end table -->`; NAME is a
key of `tables()` or 'first_steps' (`first_steps_table()`). An epoch's training error
weights each metrics record by the steps it covers (`run.steps_weighted_mean`); the epochs
end at the evaluations.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import reproduce as studies  # noqa: E402
from reproduce import claims  # noqa: E402
from reproduce.figures import read_run  # noqa: E402
from reproduce.run import steps_weighted_mean  # noqa: E402

# The follow-up's runs (FOLLOWUP/NAME/metrics.jsonl), beside the same nets under the study's recipe.
FOLLOWUP = "followup_warmup"
FOLLOWUP_RUNS = ("plain18", "resnet18_A")
MARKED = re.compile(r"(<!-- table: (\w+) -->\n)(.*?)(<!-- end table -->)", re.S)


def epochs(records: list[dict]) -> list[dict]:
  """Per epoch (the steps up to each evaluation): train_error, test_error."""
  ends = [r["step"] for r in records if "eval_accuracy" in r]
  out = []
  for start, end in zip([0] + ends, ends):
    within = [r for r in records if r["step"] <= end]
    test = next(r for r in records if r["step"] == end and "eval_accuracy" in r)
    out.append({"train_error": 1 - steps_weighted_mean(within, "train_accuracy", start),
                "test_error": 1 - test["eval_accuracy"]})
  return out


def mean_loss(records: list[dict], first: int, last: int) -> float:
  """The training loss over steps first..last, each record weighted by the steps it covers."""
  return steps_weighted_mean([r for r in records if r["step"] <= last], "train_loss", first - 1)


def _pct(x: float, digits: int = 2) -> str:
  return f"{100 * x:.{digits}f}%"


def _wall(seconds: int) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  return f"{minutes} min {seconds} s"


def _table(header: tuple[str, ...], lines: list[tuple]) -> str:
  rows = [header, tuple("---" for _ in header)] + lines
  return "".join("| " + " | ".join(str(c) for c in row) + " |\n" for row in rows)


def runs_table(rows: list[dict]) -> str:
  return _table(("run", "params", "steps", "train error (last epoch)", "test error",
                 "mean layer response", "wall time"),
                [(f"`{r['name']}`", f"{r['params']:,}", f"{r['steps']:,}", _pct(r["train_error"]),
                  _pct(r["test_error"]), f"{r['mean_layer_response']:.3f}",
                  _wall(r["wall_seconds"])) for r in rows])


def start_table(rows: list[dict]) -> str:
  def norms(r):
    start, end = r["initial_kernel_norm"], r["final_kernel_norm"]
    return f"{start:,.1f} → {end:,.1f} ({end / start:.2f}x)"
  return _table(("run", "logit std at the first step", "loss at the first step",
                 "kernel norm, start → end"),
                [(f"`{r['name']}`", f"{r['initial_logit_std']:.3f}", f"{r['initial_loss']:.3f}",
                  norms(r)) for r in rows])


def epochs_table(runs: list[tuple[str, list[dict]]]) -> str:
  """Per run (label, records): training and test error by epoch, the mean loss over steps
  1-25 and 26-50."""
  lines = []
  for label, records in runs:
    by_epoch = epochs(records)
    lines.append((label, ", ".join(_pct(e["train_error"], 1) for e in by_epoch),
                  ", ".join(_pct(e["test_error"], 1) for e in by_epoch),
                  f"{mean_loss(records, 1, 25):.2f} / {mean_loss(records, 26, 50):.2f}"))
  return _table(("run", "training error by epoch", "test error by epoch",
                 "loss, steps 1-25 / 26-50"), lines)


def seeds_table(groups: dict[str, list[dict]]) -> str:
  """Per net trained with several seeds: the mean and spread (sample standard deviation,
  lowest and highest) of its training and test error."""
  def spread(values):
    return (f"{_pct(claims.mean(values))} ± {100 * claims.sample_std(values):.2f} "
            f"({_pct(min(values))}-{_pct(max(values))})")
  return _table(("net", "seeds", "train error, mean ± std (range)",
                 "test error, mean ± std (range)"),
                [(f"`{net}`", ", ".join(str(r["seed"]) for r in rows),
                  spread([r["train_error"] for r in rows]),
                  spread([r["test_error"] for r in rows]))
                 for net, rows in groups.items() if len(rows) > 1])


def progress_line(rows: list[dict]) -> str:
  """How many of the runner's runs are finished, and which are still to run."""
  done = {r["name"] for r in rows}
  to_go = [n for n in studies.RUNS if n not in done]
  line = f"{len(studies.RUNS) - len(to_go)} of the {len(studies.RUNS)} runs are finished"
  return line + (f"; still to run: {', '.join(f'`{n}`' for n in to_go)}.\n" if to_go else ".\n")


STUDIES = (("depth", studies.DEPTH_NETS), ("imagenet_style", studies.IMAGENET_STYLE_NETS))


def by_net(rows: list[dict]) -> dict[str, list[dict]]:
  """The rows grouped by net (a net's seeds together), in their order."""
  groups: dict[str, list[dict]] = {}
  for r in rows:
    groups.setdefault(studies.parse_run(r["name"])[0], []).append(r)
  return groups


def claims_table(rows: list[dict]) -> str:
  """The paper's claims decided by claims.py's rule from the finished runs (rows carrying
  every measure of claims.CLAIMS)."""
  groups = by_net(rows)
  finished = {r["name"] for r in rows}
  decisions = []
  for claim in claims.CLAIMS:
    nets = next(nets for _, nets in STUDIES if claim.low in nets)
    values = {net: [r[claim.measure] for r in group]
              for net, group in groups.items() if net in nets}
    expected = {n for n in studies.RUNS if studies.parse_run(n)[0] in (claim.low, claim.high)}
    decisions.append(claims.decide(claim, values, claims.pooled_std(values),
                                   finished >= expected))
  return claims.table(decisions)


def tables(out: str) -> dict[str, str]:
  """Every table of the report, by name, from OUT's results.json, runs/ and FOLLOWUP/. A
  study's tables are made once it has a finished run; the progress and the claims tables
  where the runs carry seeds (configs/reproduce.py's runs; round one's carry none)."""
  path = os.path.join(out, "results.json")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = json.load(f)["runs"]
  records = {r["name"]: read_run(os.path.join(out, "runs"), r["name"]) for r in rows}
  made = {}
  if all("seed" in r for r in rows):
    made["progress"] = progress_line(rows)
    made["claims"] = claims_table(
        [dict(r, first_epoch_train_error=epochs(records[r["name"]])[0]["train_error"])
         for r in rows])
  for study, nets in STUDIES:
    done = [r for r in rows if studies.parse_run(r["name"])[0] in nets]
    if not done:
      continue
    made[f"{study}_runs"] = runs_table(done)
    made[f"{study}_start"] = start_table(done)
    made[f"{study}_epochs"] = epochs_table([(f"`{r['name']}`", records[r["name"]]) for r in done])
    groups = by_net(done)
    if any(len(g) > 1 for g in groups.values()):
      made[f"{study}_seeds"] = seeds_table(groups)
  followup = [(f"`{n}`, warm-up", read_run(os.path.join(out, FOLLOWUP), n))
              for n in FOLLOWUP_RUNS]
  followup += [(f"`{n}`, study recipe", read_run(os.path.join(out, "runs"), n))
               for n in FOLLOWUP_RUNS]
  if all(records for _, records in followup):
    made["warmup_followup"] = epochs_table(followup)
  return made


def first_steps_table(out: str) -> dict[str, str]:
  """The table of OUT/first_steps/ (reproduce/first_steps.py's runs), where it exists."""
  import pathlib

  from reproduce import first_steps
  folder = pathlib.Path(out) / "first_steps"
  return {"first_steps": first_steps.report(folder) + "\n"} if folder.is_dir() else {}


def marked_tables(text: str) -> dict[str, str]:
  """The tables a report marks, by name."""
  return {m.group(2): m.group(3) for m in MARKED.finditer(text)}


def fill(text: str, made: dict[str, str]) -> str:
  """TEXT with each marked table replaced by the one made; a marked name not made is an error."""
  unknown = sorted(set(marked_tables(text)) - set(made))
  if unknown:
    raise SystemExit(f"error: the report marks tables that the data do not make: {unknown}")
  return MARKED.sub(lambda m: m.group(1) + made[m.group(2)] + m.group(4), text)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                 help="the folder of results.json, runs/ and README.md")
  args = p.parse_args(argv)
  path = os.path.join(args.out, "README.md")
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(fill(text, {**tables(args.out), **first_steps_table(args.out)}))
  print(f"tables of {path}: {', '.join(marked_tables(text))}")


if __name__ == "__main__":
  main()
