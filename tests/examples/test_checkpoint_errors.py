"""evaluate.py and --resume on files that are not train_coco.py checkpoints: one line naming the
file and what it is, exit status 2, and nothing in the file ever runs."""

import argparse
import os
import random

import pytest
import torch
from vse import checkpoint
from vse.evaluate_cli import main as evaluate_main
from vse.training import main as train_main


def _real_checkpoint(path):
    """A checkpoint in train_coco.py's format (what save_checkpoints writes), with real weights."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    opt = torch.optim.Adam(model.parameters())
    state = {
        "format_version": checkpoint.FORMAT_VERSION,
        "epoch": 1,
        "Eiters": 20,
        "best_rsum": 150.0,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "warmup": {},
        "opt": {"data_name": "synthetic", "embed_size": 8},
        "vocab": ["<pad>", "<start>", "<end>", "<unk>"],
        "history": [],
        "rng": checkpoint.rng_state(),
    }
    checkpoint.atomic_save(state, path)
    return state


def _error_line(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def _evaluate_error(capsys, path):
    line = _error_line(capsys, evaluate_main([str(path)]))
    assert line.startswith(f"error: {path}: "), line
    return line[len(f"error: {path}: ") :]


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "model_best.pth.tar"
    path.write_bytes(b"")
    assert "empty file" in _evaluate_error(capsys, path)


@pytest.mark.parametrize(
    "content",
    [bytes(random.Random(0).getrandbits(8) for _ in range(4096)), b"epoch,loss\n1,2.5\n"],
    ids=["random bytes", "text"],
)
def test_not_a_pytorch_file(tmp_path, capsys, content):
    assert content[:1] not in (b"P", b"\x80")  # neither a zip archive nor a pickle
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(content)
    assert "not a PyTorch checkpoint" in _evaluate_error(capsys, path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 12 / 20000], ids=["half", "all but the end", "first bytes"])
def test_truncated_checkpoint(tmp_path, capsys, keep):
    whole = tmp_path / "whole.pth.tar"
    _real_checkpoint(str(whole))
    data = whole.read_bytes()
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(data[: max(8, int(len(data) * keep))])
    assert "truncated" in _evaluate_error(capsys, path)


def test_truncated_checkpoint_of_old_torch(tmp_path, capsys):
    whole = tmp_path / "whole.pth.tar"
    torch.save({"model": {"w": torch.ones(50)}, "opt": {}}, str(whole), _use_new_zipfile_serialization=False)
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(whole.read_bytes()[:-40])
    assert "truncated" in _evaluate_error(capsys, path)


def test_torch_file_holding_a_tensor(tmp_path, capsys):
    path = tmp_path / "t.pth"
    torch.save(torch.zeros(3, 4), str(path))
    problem = _evaluate_error(capsys, path)
    assert "tensor" in problem and "(3, 4)" in problem and "not a train_coco.py checkpoint" in problem


def test_torch_file_holding_a_dict_without_the_model(tmp_path, capsys):
    path = tmp_path / "d.pth"
    torch.save({"epoch": 3, "opt": {}}, str(path))
    missing = _evaluate_error(capsys, path).split(":")[0]
    assert missing.startswith("missing keys") and "'model'" in missing and "'vocab'" in missing
    assert "'epoch'" not in missing and "'opt'" not in missing


def test_bare_state_dict(tmp_path, capsys):
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), str(path))
    problem = _evaluate_error(capsys, path)
    assert "missing keys" in problem and "'weight'" in problem and "state_dict" in problem


def test_incomplete_original_vse_checkpoint(tmp_path, capsys):
    # the original code saved its options as an argparse.Namespace: read, and checked for what a model needs
    path = tmp_path / "model_best.pth.tar"
    torch.save({"model": [{}, {}], "opt": argparse.Namespace(margin=0.2), "epoch": 3}, str(path))
    problem = _evaluate_error(capsys, path)
    assert problem.startswith("an original VSE++ checkpoint whose options lack 'data_name', 'embed_size'")
    torch.save({"model": {}, "opt": argparse.Namespace(data_name="coco"), "epoch": 3}, str(path))
    assert "whose 'model' is not [image encoder state_dict, text encoder state_dict]" in _evaluate_error(capsys, path)


class _RunsCode:
    """Unpickling this creates a file: the proof that a load ran code from the checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_code_in_a_checkpoint_never_runs(tmp_path, capsys):
    marker = str(tmp_path / "ran")
    path = tmp_path / "model_best.pth.tar"
    torch.save({"model": {}, "opt": {}, "vocab": [], "epoch": 1, "x": _RunsCode(marker)}, str(path))
    problem = _evaluate_error(capsys, path)
    assert "not loaded" in problem
    assert not os.path.exists(marker)
    assert "not loaded" in _error_line(capsys, train_main(["--resume", str(path)]))
    assert not os.path.exists(marker)


def test_missing_file_and_directory(tmp_path, capsys):
    assert "no such checkpoint file" in _evaluate_error(capsys, tmp_path / "nothing.pth.tar")
    assert "directory" in _evaluate_error(capsys, tmp_path)


def test_resume_needs_the_training_state(tmp_path, capsys):
    """A checkpoint that evaluates (model, options, vocabulary) but lacks what --resume restores."""
    path = str(tmp_path / "checkpoint.pth.tar")
    state = _real_checkpoint(path)
    assert checkpoint.load(path)["epoch"] == 1
    del state["optimizer"], state["rng"]
    checkpoint.atomic_save(state, path)
    assert checkpoint.load(path)["epoch"] == 1  # enough for evaluate.py
    line = _error_line(capsys, train_main(["--resume", path]))
    assert line.startswith(f"error: {path}: missing keys") and "'optimizer'" in line and "'rng'" in line
