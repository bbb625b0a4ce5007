"""report.html: one self-contained page per compression run (plots embedded, no network needed).

    html = render_html(results, records, original_widths, images)   # a pure function of the run

`records` are `rlpruner.report.StepRecord`s (read by attribute; that module imports this one).

Sections: the before/after table (params, FLOPs, latency at two batch sizes, the task metric), the
plots (sparsity per group over the steps, the metric against FLOPs, widths), per-group widths, the
step history (reward, guard resets and their reasons, teacher), the time breakdown, and how to
reproduce the run (its command line when it came from the CLI, and its full configuration).
"""
from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any


def metric_format(percent: bool) -> str:
    """How a task metric is printed: a percentage (top-1) or a plain number (mIoU, -MSE, ...)."""
    return "{:.2%}" if percent else "{:.4g}"


def format_change(key: str, before: float, after: float, percent: bool = True) -> str:
    """Metric rows change in points (or plain units), everything else in percent of the original."""
    if key.endswith("acc"):
        return f"{100 * (after - before):+.2f} pt" if percent else f"{after - before:+.4g}"
    return f"{(after - before) / before:+.1%}" if before else "n/a"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{padding:.25rem .6rem;border-bottom:1px solid #eee}
th{text-align:left;background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.sub{color:#666}.good{color:#137333}.bad{color:#b3261e}figure{margin:1rem 0}figure img{max-width:100%}
figcaption{color:#666;font-size:.85rem}pre{background:#f6f6f6;padding:.8rem;overflow-x:auto;font-size:.8rem}
.scroll{max-height:28rem;overflow-y:auto}
"""

IMAGE_CAPTIONS = {
    "sparsity": "Fraction of each group's channels removed after every step (the RL-Pruner paper's Figure 3).",
    "accuracy": "Validation metric against the FLOPs left, after each step's pruning and after its recovery.",
    "widths": "Width of every prunable group, original and compressed.",
}


def render_html(results: Mapping[str, Any], records: Sequence[Any], original_widths: Mapping[str, int],
                images: Mapping[str, bytes]) -> str:
    """The page for one run. `images` maps a name of IMAGE_CAPTIONS to PNG bytes (missing: skipped)."""
    metric = results.get("metric", {"name": "top-1", "percent": True})
    title = f"rlpruner: {results.get('model', 'model')} on {results.get('dataset', 'data')}"
    target = results["target"]
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='sub'>Method <b>{escape(str(results.get('method', 'rl')))}</b>, target: remove "
        f"{target['value']:.1%} of the {escape(target['kind'])}; {results['steps']} steps in "
        f"{results['time_s']:.0f} s.</p>",
        "<h2>Before and after</h2>", _summary_table(results),
        "<h2>Plots</h2>", *_figures(images),
        "<h2>Per-group widths</h2>", _widths_table(results, original_widths),
        "<h2>Steps</h2>", _steps_table(records, metric),
        "<h2>Where the time went</h2>", _timing_table(results.get("timing", {})),
        "<h2>Reproduce</h2>", _reproduce(results),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool], *,
           table_id: str = "") -> str:
    """Cells are escaped here; `numeric` right-aligns a column."""
    attr = f" id='{table_id}'" if table_id else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = [f"<table{attr}><thead><tr>{head}</tr></thead><tbody>"]
    for row in rows:
        cells = "".join(f"<td class='n'>{escape(str(c))}</td>" if n else f"<td>{escape(str(c))}</td>"
                        for c, n in zip(row, numeric))
        lines.append(f"<tr>{cells}</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def comparison_rows(results: Mapping[str, Any], *, short: bool = False) -> list[tuple[str, str, str, str]]:
    """(label, original, compressed, change) for every measurement both models have: the before/after
    table of report.html and (with the `short` labels "params" and "val") of summary.md."""
    base, final = results["base"], results["final"]
    metric = results.get("metric", {"name": "top-1", "percent": True})
    batches = results.get("latency", {})
    score = metric_format(metric["percent"])
    params, val = ("params", "val") if short else ("parameters", "validation")
    specs = (("params", params, "{:,.0f}"), ("flops", "FLOPs", "{:,.0f}"),
             ("latency_ms", f"latency, batch {batches.get('batch', 1)} (ms)", "{:.3f}"),
             ("predicted_latency_ms", f"predicted latency, batch {batches.get('batch', 1)} (ms)", "{:.3f}"),
             ("latency_batch_ms", f"latency, batch {batches.get('report_batch', '?')} (ms)", "{:.3f}"),
             ("val_acc", f"{val} {metric['name']}", score), ("test_acc", f"test {metric['name']}", score))
    return [(label, fmt.format(base[key]), fmt.format(final[key]),
             latency_change(final) if key == "latency_ms" and final.get("latency_change")
             else format_change(key, base[key], final[key], metric["percent"]))
            for key, label, fmt in specs if base.get(key) is not None and final.get(key) is not None]


def latency_change(final: Mapping[str, Any]) -> str:
    """The latency change as measured: the median of the turns' ratios with its interval (the two
    latencies beside it are each model's median, so their quotient can differ slightly)."""
    change = final["latency_change"]
    where = ", in a fresh process" if change.get("process") == "fresh" else ""
    return (f"{change['change']:+.1%} ({change['confidence']:.0%} interval {change['low']:+.1%} to "
            f"{change['high']:+.1%}, {change['turns']} turns{where})")


def _summary_table(results: Mapping[str, Any]) -> str:
    timing = results.get("latency", {})
    where = ""
    if timing:
        threads = timing.get("threads")
        runtime = timing.get("runtime", "torch")
        where = (f"<p class='sub'>Latency: median forward pass on {escape(str(timing.get('device', 'cpu')))} "
                 f"({escape(str(runtime))}){f', {threads} thread(s)' if threads else ''}, eval mode, same run for "
                 "both models; predicted: the run's latency table.</p>")
    return _table(("", "original", "compressed", "change"), comparison_rows(results), (False, True, True, True),
                  table_id="summary") + where


def _figures(images: Mapping[str, bytes]) -> list[str]:
    out = []
    for name, caption in IMAGE_CAPTIONS.items():
        data = images.get(name)
        if not data:
            continue
        encoded = base64.b64encode(data).decode("ascii")
        out.append(f"<figure><img alt='{escape(name)} plot' src='data:image/png;base64,{encoded}'>"
                   f"<figcaption>{escape(caption)}</figcaption></figure>")
    return out or ["<p class='sub'>No steps were taken, so there is nothing to plot.</p>"]


def _widths_table(results: Mapping[str, Any], original_widths: Mapping[str, int]) -> str:
    widths = results.get("widths") or {n: [w, w] for n, w in original_widths.items()}
    rows = [(name, before, after, f"{1 - after / before:.0%}" if before else "")
            for name, (before, after) in widths.items()]
    return "<div class='scroll'>" + _table(("group (first layer)", "original", "compressed", "removed"), rows,
                                           (False, True, True, True), table_id="widths") + "</div>"


def _steps_table(records: Sequence[Any], metric: Mapping[str, Any]) -> str:
    if not records:
        return "<p class='sub'>No steps.</p>"
    score = metric_format(metric["percent"])
    rows = [(r.step, r.removed, f"{1 - r.flops_reduction:.1%}", f"{1 - r.params_reduction:.1%}",
             score.format(r.val_acc_pruned), score.format(r.val_acc), f"{r.reward:.4f}", r.candidates,
             "yes" if r.explored else "", r.guard_resets, r.guard_reason, r.teacher)
            for r in records]
    header = ("step", "channels removed", "FLOPs left", "params left", f"val {metric['name']} pruned",
              f"val {metric['name']} recovered", "reward", "candidates", "explored", "guard resets",
              "guard reason", "teacher")
    numeric = (True, True, True, True, True, True, True, True, False, True, False, False)
    return "<div class='scroll'>" + _table(header, rows, numeric, table_id="steps") + "</div>"


def _timing_table(timing: Mapping[str, Any]) -> str:
    labels = {"eval_s": "candidate evaluation", "trace_s": "tracing", "importance_s": "importance ranking",
              "policy_s": "policy update", "surgery_s": "surgery", "recovery_s": "recovery (KD) between steps",
              "final_s": "final fine-tune and measurements", "checkpoint_s": "checkpoints"}
    rows = [(label, f"{timing[key]:.1f}") for key, label in labels.items() if timing.get(key) is not None]
    if not rows:
        return "<p class='sub'>No timings recorded.</p>"
    return _table(("phase", "seconds"), rows, (False, True), table_id="timing")


def _reproduce(results: Mapping[str, Any]) -> str:
    parts = []
    if results.get("command"):
        parts.append(f"<p>Command line:</p><pre>{escape(results['command'])}</pre>")
    config = json.dumps(results.get("config", {}), indent=2, sort_keys=True)
    parts.append("<p>Configuration (<code>rlpruner.search.CompressConfig.from_dict</code> reads it back):</p>"
                 f"<pre>{escape(config)}</pre>")
    return "\n".join(parts)
