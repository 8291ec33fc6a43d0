"""Notebook 04 (the GNN toolkit) runs headlessly at a reduced size.

It stands alone (no dataset or run of the other notebooks), so it has its own
file: a test runner that hands out whole files runs it beside the others.
Execution as in `test_notebooks.py`.
"""

import pytest
from test_notebooks import execute_notebook, n_images, output_text


@pytest.mark.e2e
def test_gnn_toolkit_notebook_runs(tmp_path):
    nb = execute_notebook("04_gnn_toolkit.ipynb", tmp_path)
    text = output_text(nb)
    assert "smoke mode: True; saving figures: False" in text
    gcn_accuracy = float(text.split("test accuracy: GCN ")[1].split(",")[0])
    assert gcn_accuracy > 0.9  # chance 0.25
    assert "1 compiled step shape(s)" in text and "depth  4" in text
    assert n_images(nb) >= 8
    assert not list(tmp_path.rglob("*.png"))  # smoke runs save no figures
