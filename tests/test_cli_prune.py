"""`rlpruner prune` from the command line: the saved model is smaller and loads; bad input is one line."""
from __future__ import annotations

import torch

import rlpruner
from rlpruner.cli import main


def test_prune_saves_a_smaller_model_that_loads(tmp_path, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["prune", "resnet8", "--ratio", "0.5", "--image-size", "16", "--round-to", "4", "-o", str(out)]) == 0
    assert "FLOPs -" in capsys.readouterr().out
    small = rlpruner.load(out)
    x = torch.randn(1, 1, 16, 16)  # digits: one channel
    full = rlpruner.create_model("resnet8", in_channels=1)
    assert rlpruner.count(small, x).flops < 0.5 * rlpruner.count(full, x).flops
    convs = [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 4 == 0 for c in convs)


def test_show_groups_lists_groups(capsys):
    assert main(["prune", "resnet8", "--show-groups", "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "prunable" in out and "frozen" in out


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    cases = [
        (["prune", "resnet8", "--ratio", "1.5"], "must be in [0, 1)"),
        (["prune", "no_such_net", "--ratio", "0.5"], "unknown model"),
        (["prune", str(tmp_path / "missing.safetensors"), "--ratio", "0.5"], "missing"),
        (["prune", "resnet8", "--ratios", "{not json"], "not valid JSON"),
        (["prune", "resnet8"], "give --ratio"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert not list(tmp_path.iterdir())
