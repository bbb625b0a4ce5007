"""`rlpruner train` / `rlpruner evaluate` in-process: a real round trip, and one-line errors for bad input."""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

from rlpruner.cli import COMMANDS, build_parser, main

FAST = ["--model", "simple_cnn", "--dataset", "digits", "--image-size", "8", "--epochs", "2", "--batch-size", "128"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(capsys, *argv: str, match: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below (a few seconds)."""
    out = tmp_path_factory.mktemp("run") / "model.safetensors"
    code = main(["train", *FAST, "--out", str(out)])
    assert code == 0
    return out


def test_train_writes_a_checkpoint_and_its_history(trained):
    history = json.loads(trained.with_name("model.train.json").read_text())
    assert history["model"] == "simple_cnn" and history["data"]["image_size"] == 8
    assert len(history["history"]) == 2 and history["test"]["top1"] > 0.30  # chance is 10%
    assert history["best_val"]["top1"] == max(e["val_top1"] for e in history["history"])
    assert sorted(p.name for p in trained.parent.iterdir()) == ["model.safetensors", "model.train.json"]  # no temp files


def test_evaluate_prints_a_table_and_writes_json(trained, capsys, tmp_path):
    out = tmp_path / "eval.json"
    code, stdout, _ = run_cli(capsys, "evaluate", str(trained), "--latency-repeats", "3", "--latency-batch", "2",
                              "--out", str(out))
    assert code == 0
    header = stdout.splitlines()[0].split()
    assert header[:5] == ["model", "data", "params", "FLOPs", "latency"] and "top-1" in header
    report = json.loads(out.read_text())
    history = json.loads(trained.with_name("model.train.json").read_text())
    assert report["split"] == "test" and report["top1"] == pytest.approx(history["test"]["top1"])
    assert report["params"] == history["params"] and report["flops"] == history["flops"]
    assert report["latency"]["batch_size"] == 2 and report["latency"]["median_ms"] > 0
    assert report["data"]["name"] == "digits" and report["samples"] == 359


def test_evaluate_on_another_split_and_a_mismatched_dataset(trained, capsys, tmp_path):
    out = tmp_path / "val.json"
    code, _, _ = run_cli(capsys, "evaluate", str(trained), "--split", "val", "--latency-repeats", "1",
                         "-o", str(out))
    assert code == 0 and json.loads(out.read_text())["samples"] == 179
    assert_user_error(capsys, "evaluate", str(trained), "--dataset", "synthetic", "--data-option", "num_classes=4",
                      "-o", str(tmp_path / "x.json"), match="has 4 classes")
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("argv, match", [
    (["--epochs", "-1"], "epochs must be an integer >= 1"),
    (["--lr", "0"], "lr must be a finite number > 0"),
    (["--batch-size", "0"], "batch_size"),
    (["--momentum", "1.5"], "momentum"),
    (["--image-size", "4"], "image_size must be >= 8"),
    (["--in-channels", "2"], "in_channels=2"),
    (["--val-fraction", "1"], "val_fraction"),
    (["--model", "resnet2O"], "resnet20"),
    (["--dataset", "mnist"], "digits"),
    (["--device", "toaster"], "toaster"),
    (["--data-option", "novalue"], "KEY=VALUE"),
    (["--threads", "0"], "--threads"),
])
def test_train_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, match):
    out = tmp_path / "m.safetensors"
    assert_user_error(capsys, "train", *FAST, "--out", str(out), *argv, match=match)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_missing_cifar_archive_names_where_it_looked(capsys, tmp_path):
    err = assert_user_error(capsys, "train", "--dataset", "cifar10", "--data-root", str(tmp_path),
                            "--out", str(tmp_path / "m.safetensors"), match="cifar-10-batches-py")
    assert str(tmp_path) in err and list(tmp_path.iterdir()) == []


def test_evaluate_bad_checkpoints(capsys, tmp_path):
    assert_user_error(capsys, "evaluate", str(tmp_path / "nope.safetensors"), match="no such file")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x80\x04not a model at all")
    assert_user_error(capsys, "evaluate", str(corrupt), match="corrupt.safetensors")
    assert_user_error(capsys, "evaluate", str(corrupt), "--latency-batch", "0", match="--latency-batch")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.safetensors"]


def test_every_command_writes_to_out_or_o_and_imports_no_other_command():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in COMMANDS:
        flags = {flag for action in commands[name]._actions for flag in action.option_strings}
        assert {"--out", "--output", "-o"} <= flags, name  # one option, three spellings, on every command
        source = Path(__file__).parents[1] / "rlpruner" / "commands" / f"{name}.py"
        imported = {node.module for node in ast.walk(ast.parse(source.read_text()))
                    if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert imported <= {"common"}, (name, imported)
