"""The documentation stays true: every repository path, config, module and benchmark script
it names exists, and docs/nnx.md's example runs.

(tests/test_readme.py runs README's ```python blocks.)
"""

import contextlib
import glob
import importlib
import importlib.util
import io
import itertools
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ("README.md", "benchmarks/README.md", "docs/nnx.md")
TOP_DIRS = ("configs", "benchmarks", "flax_resnet", "tests", "notebooks", "docs", "reproduce")
# A repository path: one of TOP_DIRS, then path characters (braces for {a,b} alternatives).
PATH = re.compile(r"(?<![\w/.$-])((?:%s)/[\w./{},*-]*)" % "|".join(TOP_DIRS))
PLACEHOLDERS = re.compile(r"\b(DIR\d*|WORKDIR|DATA|FILE|NAME)\b|\$")


def code_spans(text: str) -> list[str]:
  """Fenced code blocks, indented code blocks, inline `code` spans and relative link targets."""
  fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
  rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
  indented = re.findall(r"(?:^(?: {4}|\t)[^\n]*\n?)+", rest, flags=re.M)
  inline = re.findall(r"`([^`\n]+(?:\n[^`\n]+)*)`", rest)  # may wrap, not across paragraphs
  links = [t for t in re.findall(r"\]\(([^)\s]+)\)", rest) if "://" not in t]
  return fenced + indented + inline + links


def expand_braces(path: str) -> list[str]:
  """'configs/resnet{18,34}.py' -> ['configs/resnet18.py', 'configs/resnet34.py']."""
  parts = re.split(r"\{([^{}]*)\}", path)
  choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
  return ["".join(c) for c in itertools.product(*choices)]


def repository_paths(text: str) -> set[str]:
  found = set()
  for span in code_spans(text):
    for match in PATH.finditer(span):
      # Stops at ':' (`tests/test_x.py::test_name` gives the file); a '/' before it (a
      # bucket's gs://.../configs/...) is no match.
      path = match.group(1).rstrip(".,;:")
      if not PLACEHOLDERS.search(path):
        found.add(path)
  return found


def skipped(path: str) -> bool:
  """Paths that name what a run writes, not what the repository holds."""
  return path.startswith("workdirs/") or "/workdirs/" in path or pathlib.PurePosixPath(
      path).name in ("metrics.jsonl", "curves.png", "cmp.png")


def missing_paths(doc: str) -> list[str]:
  text = (ROOT / doc).read_text()
  missing = []
  for path in sorted(repository_paths(text)):
    if skipped(path):
      continue
    for candidate in expand_braces(path):
      if "*" in candidate:
        if not glob.glob(str(ROOT / candidate)):
          missing.append(f"{doc}: `{candidate}` matches nothing in the repository")
      elif not (ROOT / candidate).exists():
        missing.append(f"{doc}: `{candidate}` does not exist in the repository")
  return missing


@pytest.mark.parametrize("doc", DOCS)
def test_paths_named_in_docs_exist(doc):
  missing = missing_paths(doc)
  assert not missing, "\n".join(missing)


def test_path_extraction_finds_what_it_should():
  text = ("Run `python benchmarks/step_speed.py` and `configs/resnet{18,34}.py`, see\n"
          "[the figures](benchmarks/README.md).\n\n    python train.py --config=configs/x.py "
          "--workdir=workdirs/x\n\n```sh\npython -m flax_resnet.plotting DIR1 "
          "--out=workdirs/a/curves.png\n```\n")
  assert repository_paths(text) == {"benchmarks/step_speed.py", "configs/resnet{18,34}.py",
                                    "benchmarks/README.md", "configs/x.py"}
  assert expand_braces("configs/resnet{18,34}.py") == ["configs/resnet18.py",
                                                       "configs/resnet34.py"]


def test_configs_in_readme_commands_load_and_pass_the_checks():
  from flax_resnet.config import check_config

  text = (ROOT / "README.md").read_text()
  names = sorted({found for span in code_spans(text)
                  for found in re.findall(r"--config=configs/(\w+)\.py(?::(\w+))?", span)})
  assert names, "README.md names no --config=configs/NAME.py"
  problems = []
  for name, arg in names:  # configs/NAME.py or configs/NAME.py:ARG (get_config(ARG))
    try:
      module = importlib.import_module(f"configs.{name}")
      check_config(module.get_config(arg) if arg else module.get_config())
    except Exception as e:  # noqa: BLE001  (report every config, then fail)
      problems.append(f"README.md: --config=configs/{name}.py{':' + arg if arg else ''} does "
                      f"not load or check: {type(e).__name__}: {e}")
  assert not problems, "\n".join(problems)


def test_modules_and_benchmark_scripts_named_in_docs_exist():
  problems = []
  for doc in DOCS:
    text = (ROOT / doc).read_text()
    for module in sorted(set(re.findall(r"python3? -m (flax_resnet(?:\.\w+)*)", text))):
      if importlib.util.find_spec(module) is None:
        problems.append(f"{doc}: `python -m {module}`: no such module")
    for script in sorted(set(re.findall(r"python3? (benchmarks/\w+\.py)", text))):
      if not (ROOT / script).is_file():
        problems.append(f"{doc}: `python {script}`: no such file")
    for script in sorted(set(re.findall(r"bash (benchmarks/\w+\.sh)", text))):
      if not (ROOT / script).is_file():
        problems.append(f"{doc}: `bash {script}`: no such file")
  assert not problems, "\n".join(problems)


def resolves(dotted: str) -> bool:
  """Whether `flax_resnet.a.b.c` names a module, or an attribute of the longest module prefix."""
  parts = dotted.split(".")
  for cut in range(len(parts), 0, -1):
    module_name = ".".join(parts[:cut])
    try:
      if importlib.util.find_spec(module_name) is None:
        continue
    except ModuleNotFoundError:
      continue
    obj = importlib.import_module(module_name)
    for attribute in parts[cut:]:
      if not hasattr(obj, attribute):
        return False
      obj = getattr(obj, attribute)
    return True
  return False


def test_flax_resnet_names_in_docs_resolve():
  """`flax_resnet.step.train_step`, `flax_resnet.cpu.model_overrides`, ... name what exists."""
  problems = []
  for doc in DOCS:
    names = {name for span in code_spans((ROOT / doc).read_text())
             for name in re.findall(r"(?<![\w./])flax_resnet(?:\.\w+)+", span)}
    problems += [f"{doc}: `{name}` names nothing in the library" for name in sorted(names)
                 if not resolves(name)]
  assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_nnx_example_runs():
  """docs/nnx.md's example: ToNNX around cifar_resnet20, a training-mode pass that updates
  batch_stats, one SGD step, and eval logits equal to Linen's apply (its own asserts)."""
  doc = ROOT / "docs" / "nnx.md"
  blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
  assert blocks, "docs/nnx.md has no ```python block"
  out = io.StringIO()
  namespace = {}
  with contextlib.redirect_stdout(out):
    for code in blocks:
      exec(compile(code, str(doc), "exec"), namespace)
  assert "eval logits equal Linen's apply" in out.getvalue(), out.getvalue()
  for name in ("changed", "moved"):  # BatchNorm statistics, then parameters, updated
    assert namespace[name], f"docs/nnx.md's example defines no {name!r}"


def test_tests_named_in_the_reliability_table_exist():
  """Each guarantee of README's reliability table names tests that exist (`test_bad_*`: a
  prefix), in the file it names (`test_faults.py::test_...`)."""
  text = (ROOT / "README.md").read_text()
  table = text.split("## Reliability", 1)[1].split("\n## ", 1)[0]
  defined = {path.name: set(re.findall(r"^def (test_\w+)", path.read_text(), flags=re.M))
             for path in (ROOT / "tests").glob("test_*.py")}
  missing = []
  named = re.findall(r"(?<![\w/])(?:(test_\w+\.py)::)?(test_\w+(?:\.py|\*)?)", table)
  for file, name in sorted(set(named)):
    names = defined.get(file, set()) if file else set().union(*defined.values())
    if name.endswith(".py"):  # a whole file
      found = name in defined
    elif name.endswith("*"):
      found = any(d.startswith(name[:-1]) for d in names)
    else:
      found = name in names
    if not found:
      missing.append(f"{file}::{name}" if file else name)
  assert not missing, f"README's reliability table names missing tests: {missing}"


def test_project_layout_names_every_module():
  text = (ROOT / "README.md").read_text()
  table = text[text.index("## Project layout"):].split("\n## ")[0]
  named = set(re.findall(r"`(?:flax_resnet/)?(?:data/)?(\w+\.py)`", table))
  unnamed = [p.name for p in sorted((ROOT / "flax_resnet").glob("**/*.py"))
             if p.name != "__init__.py" and p.name not in named]
  assert not unnamed, f"README's project layout does not name {', '.join(unnamed)}"
