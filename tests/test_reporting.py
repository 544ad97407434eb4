"""What a run reports: metrics.jsonl stays strict JSON."""

import json

import numpy as np

from flax_resnet.reporting import Reporter, read_metrics


def _strict(text):
  """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript, jq, Go) do."""
  def refuse(name):
    raise ValueError(f"not strict JSON: {name}")
  return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def test_non_finite_values_are_written_as_null(tmp_path):
  reporter = Reporter(str(tmp_path), 10, 32, tensorboard=False)
  reporter.write(1, {"train_loss": np.float32("nan"), "learning_rate": float("inf"),
                     "train_accuracy": np.float32(0.5)})
  reporter.write(2, {"train_loss": -np.inf, "learning_rate": 0.1, "note": "x"})
  records = _strict((tmp_path / "metrics.jsonl").read_text())
  assert records == [
      {"step": 1, "train_loss": None, "learning_rate": None, "train_accuracy": 0.5},
      {"step": 2, "train_loss": None, "learning_rate": 0.1, "note": "x"}]
  assert read_metrics(str(tmp_path)) == records


def test_a_resume_rewrites_an_older_file_with_nan_as_strict_json(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": NaN}\n'
                                          '{"step": 2, "train_loss": 1.0}\n'
                                          '{"step": 3, "train_loss": 2.0}\n')
  Reporter(str(tmp_path), 10, 32, start_step=2, tensorboard=False)
  assert _strict((tmp_path / "metrics.jsonl").read_text()) == [
      {"step": 1, "train_loss": None}, {"step": 2, "train_loss": 1.0}]


def test_a_last_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n{"step": 2, "train_lo')
  Reporter(str(tmp_path), 10, 32, start_step=2, tensorboard=False)
  assert _strict((tmp_path / "metrics.jsonl").read_text()) == [{"step": 1, "train_loss": 1.0}]
  assert read_metrics(str(tmp_path)) == [{"step": 1, "train_loss": 1.0}]
