"""Run reports from synthetic step records: logs, plots, summary."""
import csv
import json

import numpy as np

from rlpruner import report

ORIGINAL = {"conv1": 16, "conv2": 32, "fc1": 64}


def _records(n=4):
    out = []
    widths = dict(ORIGINAL)
    for step in range(1, n + 1):
        widths = {"conv1": widths["conv1"] - 1, "conv2": widths["conv2"] - 2, "fc1": widths["fc1"] - 4}
        removed_total = sum(ORIGINAL.values()) - sum(widths.values())
        out.append(report.StepRecord(
            step=step, removed=7, removed_total=removed_total, sparsity=removed_total / 112,
            flops=1000 - 100 * step, params=500 - 40 * step, flops_reduction=0.1 * step,
            params_reduction=0.08 * step, val_acc_pruned=0.9 - 0.02 * step, val_acc=0.95 - 0.01 * step,
            reward=0.9 - 0.02 * step, epsilon=0.0, explored=False, guard_resets=int(step == 2),
            teacher="original", latency_ms=None if step % 2 else 1.5, widths=dict(widths),
            pd={"conv1": 0.2, "conv2": 0.3, "fc1": 0.5}, times={"eval_s": 1.0, "search_s": 0.05}))
    return out


def _results(records):
    return {"model": "tiny", "dataset": "digits", "target": {"kind": "flops", "value": 0.4},
            "steps": len(records), "time_s": 12.0,
            "base": {"params": 500, "flops": 1000, "val_acc": 0.96, "latency_ms": 2.0, "test_acc": 0.95},
            "final": {"params": 340, "flops": 600, "val_acc": 0.91, "latency_ms": 1.2, "test_acc": 0.9},
            "timing": {"eval_s": 4.0, "search_s": 0.2}}


def test_logs_round_trip_and_csv_has_widths(tmp_path):
    records = _records()
    jsonl, csv_path = report.write_logs(tmp_path, records)
    assert report.read_logs(tmp_path) == records
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["width:conv2"] == "24" and rows[0]["latency_ms"] == "" and rows[1]["latency_ms"] == "1.5"
    assert rows[1]["time_eval_s"] == "1.0"
    # rewriting with fewer records (a resumed run) replaces the files, never appends
    report.write_logs(tmp_path, records[:2])
    assert len(jsonl.read_text().splitlines()) == 2


def test_sparsity_matrix_values():
    m = report.sparsity_matrix(_records(2), ORIGINAL)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m[:, 0], 0.0)
    np.testing.assert_allclose(m[:, 2], [2 / 16, 4 / 32, 8 / 64])


def test_write_report_makes_every_artifact(tmp_path):
    records = _records()
    paths = report.write_report(tmp_path, _results(records), records, ORIGINAL)
    for key in ("results", "steps_jsonl", "steps_csv", "sparsity_plot", "accuracy_plot", "widths_plot", "summary"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    assert paths["sparsity_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["results"].read_text())["final"]["flops"] == 600
    assert not list(tmp_path.rglob("*.tmp"))


def test_summary_numbers_come_from_results():
    records = _records()
    text = report.summary_markdown(_results(records), records)
    assert "| FLOPs | 1,000 | 600 | -40.0% |" in text
    assert "| test top-1 | 95.00% | 90.00% | -5.00 pt |" in text
    assert "(5.0%)" in text  # overhead 0.2 s / 4.0 s
    assert "Accuracy-guard resets: 1" in text


def test_summary_skips_missing_metrics():
    records = _records(1)
    results = _results(records)
    del results["base"]["latency_ms"]
    results["final"]["test_acc"] = None
    text = report.summary_markdown(results, records)
    assert "latency" not in text and "test top-1" not in text


def test_report_without_steps_writes_results_and_summary_only(tmp_path):
    paths = report.write_report(tmp_path, _results([]), [], ORIGINAL)
    assert "sparsity_plot" not in paths and paths["summary"].exists()
