"""Executes notebooks/quickstart.ipynb top to bottom, so it never rots: any failing cell (the
notebook asserts its own results, e.g. that fine-tuning lowers the loss) fails this test."""

import pathlib
import subprocess
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
import pytest

pytestmark = pytest.mark.slow  # starts train.py or trains: `pytest -m 'not slow'` skips it

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def ensure_python3_kernel():
  """The 'python3' kernelspec, registered for this interpreter if the machine has none."""
  try:
    KernelSpecManager().get_kernel_spec("python3")
  except NoSuchKernel:
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True)


def stream_text(notebook) -> str:
  return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.outputs if output.output_type == "stream")


def test_quickstart_notebook_runs(tmp_path):
  ensure_python3_kernel()
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert notebook.metadata.kernelspec.name == "python3"
  assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
      "commit the notebook without outputs")
  NotebookClient(notebook, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = stream_text(notebook)
  assert "round trip exact: True" in text
  assert "total: 11,689,512 parameters" in text  # torchvision's ResNet-18 count
  assert "(512, 32, 32, 3)" in text
  assert "mean loss of the first 3 steps" in text
