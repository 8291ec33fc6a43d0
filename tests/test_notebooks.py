"""The notebooks run headlessly at a reduced size, and are stored without outputs.

Each notebook is executed with nbclient in one temporary working directory (its
datasets and runs go there, never into the repository), with
NRI_NOTEBOOK_SMOKE=1 so that the notebooks shrink their sizes. Notebook 03
opens the shipped model by default and, given NRI_RUN_DIR, the run that
notebook 02 trained (02 runs first in the same directory). Notebook 04 (the GNN
toolkit) stands alone. A cell that raises fails the test.
"""

import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
ORDER = ("01_simulators.ipynb", "02_train_nri.ipynb", "03_inspect_model.ipynb",
         "04_gnn_toolkit.ipynb")
KERNEL_CHECK = "import sys; print(sys.executable)"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _execute(name: str, workdir: pathlib.Path, **env_vars: str) -> nbformat.NotebookNode:
    """Executes a copy of the notebook in `workdir` with `env_vars` set; the first cell
    reports the kernel's Python."""
    nb = _read(name)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    env = {**os.environ, "NRI_NOTEBOOK_SMOKE": "1", **env_vars,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                       os.environ.get("PYTHONPATH")]))}
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    kernel_python = nb.cells[0].outputs[0]["text"].strip()
    assert os.path.realpath(kernel_python) == os.path.realpath(sys.executable), \
        f"{name} ran on {kernel_python}, not on the test's Python {sys.executable}"
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs)


def _n_images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for out in cell.outputs)


def test_every_notebook_is_executed_by_these_tests():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_notebook_is_stored_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}: clear the outputs before committing"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "2-core CPU" in first.source, \
        f"{name} must open with a markdown cell saying what it shows and how long it takes"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="module")
def trained(workdir):
    """Notebook 02 executed in `workdir`: a trained run and the pointer to it."""
    return _execute("02_train_nri.ipynb", workdir)


@pytest.mark.e2e
def test_simulators_notebook_runs(workdir):
    nb = _execute("01_simulators.ipynb", workdir)
    text = _text(nb)
    assert "springs   256 trajectories" in text  # smoke mode times springs only
    assert _n_images(nb) >= 7


@pytest.mark.e2e
def test_training_notebook_trains_and_points_to_its_run(workdir, trained):
    pointer = workdir / "runs" / "latest_notebook_run.txt"
    run_dir = pathlib.Path(pointer.read_text().strip())
    assert run_dir.parent == workdir / "runs" and (workdir / "data").is_dir()
    for name in ("config.json", "metrics.jsonl", "report.json"):
        assert (run_dir / name).is_file()
    assert "test edge accuracy, best permutation" in _text(trained)
    assert _n_images(trained) >= 1


@pytest.mark.e2e
def test_training_notebook_resumes_an_existing_run(workdir, trained):
    # Executed again with the same config, it resumes (here: re-evaluates) the same run.
    before = (workdir / "runs" / "latest_notebook_run.txt").read_text()
    again = _execute("02_train_nri.ipynb", workdir)
    assert "resuming" in _text(again)
    assert (workdir / "runs" / "latest_notebook_run.txt").read_text() == before
    assert len(list((workdir / "runs").glob("notebook-quick-*"))) == 1


@pytest.mark.e2e
def test_inspection_notebook_runs_on_the_trained_run(workdir, trained):
    run_dir = (workdir / "runs" / "latest_notebook_run.txt").read_text().strip()
    nb = _execute("03_inspect_model.ipynb", workdir, NRI_RUN_DIR=run_dir)
    text = _text(nb)
    assert f"run {run_dir}:" in text and "test examples analysed" in text
    assert _n_images(nb) >= 7


@pytest.mark.e2e
def test_inspection_notebook_opens_the_shipped_model_by_default(tmp_path):
    # A fresh clone has no runs: by default the notebook opens pretrained/springs5, whose
    # data it regenerates (here in tmp_path) from the seed in the run directory.
    nb = _execute("03_inspect_model.ipynb", tmp_path)
    text = _text(nb)
    assert f"run {REPO / 'pretrained' / 'springs5'}:" in text
    accuracy = float(text.split("edge accuracy over 200 test examples: ")[1].split()[0])
    assert accuracy > 0.95  # the shipped model's 0.9925, on a small sample
    assert _n_images(nb) >= 7


@pytest.mark.e2e
def test_gnn_toolkit_notebook_runs(tmp_path):
    nb = _execute("04_gnn_toolkit.ipynb", tmp_path)
    text = _text(nb)
    assert "smoke mode: True; saving figures: False" in text
    gcn_accuracy = float(text.split("test accuracy: GCN ")[1].split(",")[0])
    assert gcn_accuracy > 0.9  # chance 0.25
    assert "1 compiled step shape(s)" in text and "depth  4" in text
    assert _n_images(nb) >= 8
    assert not list(tmp_path.rglob("*.png"))  # smoke runs save no figures
