"""evaluate.py --table: the paper's Tables 1 and 2 from run reports."""

import json

import evaluate
from nri_jax import configs, experiment, tables


def _run(path, report, **changes):
    """A run directory with a config and a test report (as train.py leaves it)."""
    path.mkdir()
    config = configs.override(configs.get_preset("tiny"), **changes)
    (path / experiment.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    (path / experiment.DATA_FILE).write_text(json.dumps({"path": None, "n_encoder_frames": 49}))
    (path / experiment.REPORT_JSON).write_text(json.dumps(report))
    return path


def test_table_has_a_row_per_run_in_the_tables_its_method_reports(tmp_path, capsys):
    mse = [1e-6 * (h + 1) for h in range(20)]
    static = [1e-3 * (h + 1) for h in range(20)]
    nri = _run(tmp_path / "nri", {"edge_accuracy": 0.25, "edge_accuracy_best_permutation": 0.75,
                                  "mse_by_horizon": mse, "static_mse_by_horizon": static})
    same_data = _run(tmp_path / "same_data", {"nll": 1.0, "mse_by_horizon": mse,
                                              "static_mse_by_horizon": static},
                     method="full-graph")
    graph = _run(tmp_path / "graph", {"nll": 1.0, "mse_by_horizon": mse[:10]},
                 method="true-graph", system="charged", decoder="rnn")
    out = tmp_path / "tables.json"
    assert evaluate.main(["--table", str(nri), str(same_data), str(graph),
                          "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # The static baseline comes from the test data: one row for the two springs runs.
    assert text.count("| springs 5 | static (repeats the last frame the encoder saw) | "
                      f"{nri} | 1.00e-03 | 1.00e-02 | 2.00e-02 | - |") == 1
    assert "static" not in text.split("charged 5")[1]
    assert (f"| springs 5 | nri (mlp encoder, mlp decoder) | {nri} | 0.7500 | 0.2500 | 0.999 |"
            in text)
    assert f"| springs 5 | nri (mlp encoder, mlp decoder) | {nri} | 1.00e-06 | 1.00e-05 | " \
           "2.00e-05 | 1: 3.12e-08, 20: 2.13e-05 |" in text
    # The decoder-only run has no edge accuracy, and its report stops at 10 steps.
    assert f"| charged 5 | true-graph (rnn decoder) | {graph} | 1.00e-06 | 1.00e-05 | - | - |" \
           in text and text.count(str(graph)) == 1
    result = json.loads(out.read_text())
    assert [r["run"] for r in result["table1"]] == [str(nri)]
    assert [r["run"] for r in result["table2"]] == [str(nri), str(nri), str(same_data),
                                                    str(graph)]
    assert result["table2"][3]["mse"] == {"1": mse[0], "10": mse[9], "20": None}
    assert result["source"] == tables.PAPER_SOURCE


def test_table_refuses_a_run_without_a_report(tmp_path, capsys):
    run = _run(tmp_path / "run", {})
    (run / experiment.REPORT_JSON).unlink()
    assert evaluate.main(["--table", str(run)]) == 1
    assert f"{run} has no test report report.json" in capsys.readouterr().err


def test_simulation_and_lstm_rows_are_named_for_themselves(tmp_path):
    report = {"edge_accuracy": 0.5, "edge_accuracy_best_permutation": 0.5,
              "mse_by_horizon": [1e-6] * 20}
    learned = _run(tmp_path / "learned", report)
    simulated = _run(tmp_path / "simulated", report, decoder="simulation")
    lstm = _run(tmp_path / "lstm", {"nll": 1.0, "mse_by_horizon": [1e-6] * 20},
                decoder="lstm-joint", method="full-graph")
    result = tables.tables([learned, simulated, lstm])
    rows = result["table1"]
    assert [r["paper"] for r in rows] == [tables.PAPER_ACCURACY[("nri", "springs", 5)], None]
    assert "simulation decoder" in rows[1]["method"]
    # A graph-free baseline is named for itself, not for the graph it was given.
    assert [r["method"] for r in result["table2"] if r["run"] == str(lstm)] == ["lstm-joint"]
