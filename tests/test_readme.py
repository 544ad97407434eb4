"""The README's notebook example runs as written, and prints what it says it prints."""

import contextlib
import io
import pathlib
import re
import pytest

pytestmark = pytest.mark.slow  # starts train.py or trains: `pytest -m 'not slow'` skips it

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_examples_run_and_print_what_they_claim():
  blocks = python_blocks()
  assert blocks, "README has no python example"
  for code in blocks:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      exec(compile(code, str(README), "exec"), {})
    claimed = [l[2:] for l in code.splitlines() if l.startswith("# ") and not l.startswith("# (")]
    for line in claimed:
      assert line in out.getvalue(), f"README claims output {line!r}, got {out.getvalue()!r}"
