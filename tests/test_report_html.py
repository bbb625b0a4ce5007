"""What a run leaves for people and their tools: report.html (rendered in a real browser when one is
installed) and TensorBoard events (read back with TensorBoard's own reader)."""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import subprocess

import pytest

from rlpruner.distill import DistillConfig
from rlpruner.search import CompressConfig, RLConfig, Target, compress

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _config() -> CompressConfig:
    return CompressConfig(target=Target("flops", 0.3), rl=RLConfig(prune_filter_ratio=0.08, lr_epoch=1, sample_num=3),
                          kd=DistillConfig(epochs=1, batch_size=16, lr=0.01), final_epochs=1,
                          latency_repeats=2, latency_warmup=0, report_batch=4, progress=False)


class _StopAfterOne(Exception):
    pass


@pytest.fixture(scope="module")
def run(tiny_trained, tiny_splits, tmp_path_factory):
    """A run stopped after its first step and resumed, streaming to TensorBoard when it is installed."""
    out = tmp_path_factory.mktemp("run")
    board = out / "tb" if _has_tensorboard() else None

    def stop(record):
        raise _StopAfterOne

    with pytest.raises(_StopAfterOne):
        compress(tiny_trained, tiny_splits, _config(), out_dir=out, on_step=stop, tensorboard=board)
    result = compress(tiny_trained, tiny_splits, _config(), out_dir=out, resume=True, tensorboard=board,
                      meta={"command": "rlpruner compress tiny --target-flops 0.3"})
    return out, result, board


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# report.html
# --------------------------------------------------------------------------------------------------

def test_the_report_is_one_self_contained_page_with_every_section(run):
    out, result, _ = run
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and result.paths["html"] == out / "report.html"
    # nothing is fetched: no scripts, no external stylesheets or images
    assert "<script" not in page and not re.search(r"(src|href)=['\"](?!data:)", page)
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for heading in ("Before and after", "Plots", "Per-group widths", "Steps", "Where the time went", "Reproduce"):
        assert f"<h2>{heading}</h2>" in page
    results = result.results
    summary = _table(page, "summary")
    assert [row[0] for row in summary] == ["parameters", "FLOPs", "latency, batch 1 (ms)", "latency, batch 4 (ms)",
                                           "validation top-1", "test top-1"]
    assert summary[0][1:3] == [f"{results['base']['params']:,}", f"{results['final']['params']:,}"]
    widths = _table(page, "widths")
    assert {row[0]: [int(row[1]), int(row[2])] for row in widths} == results["widths"]
    steps = _table(page, "steps")
    assert [int(row[0]) for row in steps] == [r.step for r in result.records]
    assert "rlpruner compress tiny --target-flops 0.3" in page
    config = json.loads(re.search(r"Configuration .*?<pre>(.*?)</pre>", page, re.S).group(1).replace("&quot;", '"'))
    expected = _config()  # as it ran: round_to "auto" resolved (1 for a FLOPs target)
    assert CompressConfig.from_dict(config) == dataclasses.replace(expected, rl=dataclasses.replace(expected.rl, round_to=1))


def _table(page: str, table_id: str) -> list[list[str]]:
    body = re.search(rf"<table id='{table_id}'>.*?<tbody>(.*?)</tbody>", page, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_the_report_escapes_what_it_shows(run, tmp_path):
    from rlpruner.report_html import render_html

    out, result, _ = run
    results = {**result.results, "model": "<script>alert(1)</script>", "command": "a && b < c"}
    page = render_html(results, result.records, {n: w[0] for n, w in results["widths"].items()}, {})
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp;&amp; b &lt; c" in page


def _browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def test_the_report_renders_in_a_headless_browser(run, tmp_path):
    """Chromium loads the page from disk with the network off, draws the tables and decodes the images."""
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome installed (Debian: apt-get install chromium); .ci/run installs it")
    out, _, _ = run
    probe = ("<script>window.addEventListener('load', () => { document.body.dataset.images = "
             "[...document.images].map(i => i.complete && i.naturalWidth > 0).join(','); "
             "document.body.dataset.rows = document.querySelectorAll('#summary tbody tr').length; "
             "document.body.dataset.height = document.querySelector('#summary').offsetHeight; });</script>")
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images="true,true,true"' in dom.stdout, dom.stdout[-500:]
    assert 'data-rows="6"' in dom.stdout
    height = int(re.search(r'data-height="(\d+)"', dom.stdout).group(1))
    assert height > 100
    shot = tmp_path / "shot.png"
    done = subprocess.run([*flags, "--window-size=1200,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from PIL import Image

    pixels = Image.open(shot).convert("L")
    low, high = pixels.getextrema()
    assert high - low > 100  # text and plots, not a blank page


# --------------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------------

def test_tensorboard_gets_every_step_once_across_a_resume(run):
    out, result, board = run
    if board is None:
        pytest.skip("tensorboard is not installed (pip install tensorboard; make install adds it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(board), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    steps = [r.step for r in result.records]
    reward = events.Scalars("search/reward")
    assert [e.step for e in reward] == steps
    assert [e.value for e in reward] == pytest.approx([r.reward for r in result.records], rel=1e-6)
    flops_left = events.Scalars("cost/flops_left")
    assert [e.step for e in flops_left] == [0, *steps] and flops_left[0].value == 1.0
    assert flops_left[-1].value == pytest.approx(1 - result.records[-1].flops_reduction, rel=1e-6)
    assert {"metric/val_top-1", "metric/val_top-1_pruned", "search/guard_resets", "cost/params_left",
            "final/val_top-1", "final/flops_reduction"} <= set(tags["scalars"])
    histogram = events.Histograms("widths/kept_fraction")
    assert [h.step for h in histogram] == steps and histogram[-1].histogram_value.num == len(result.results["widths"])


def test_tensorboard_without_the_package_is_refused_up_front(monkeypatch, tiny_trained, tiny_splits, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from rlpruner.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the tensorboard package: pip install tensorboard"):
        compress(tiny_trained, tiny_splits, _config(), out_dir=tmp_path / "x", tensorboard=tmp_path / "tb")
    assert not (tmp_path / "x").exists()


def test_the_cli_streams_to_tensorboard(tmp_path, capsys):
    if not _has_tensorboard():
        pytest.skip("tensorboard is not installed")
    from rlpruner.cli import main

    code = main(["compress", "simple_cnn", "--dataset", "digits", "--image-size", "8", "--target-flops", "0.2",
                 "--prune-filter-ratio", "0.1", "--lr-epoch", "1", "--sample-num", "2", "--kd-epochs", "1",
                 "--final-epochs", "0", "--latency-repeats", "2", "--report-batch", "2", "--no-test",
                 "-o", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "tb")])
    assert code == 0, capsys.readouterr().err
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert "report.html" in capsys.readouterr().out
