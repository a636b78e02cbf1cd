"""Training progress: plain lines every --log_step iterations when stdout is not a terminal, a
tqdm bar when it is."""

import csv
import os
import re
import sys

import pytest
from vse.training import main

LINE = re.compile(
    r"Epoch: \[(\d+)\]\[(\d+)/(\d+)\]  iteration (\d+)  loss (\S+) \(epoch mean (\S+)\)  "
    r"lr (\S+)  (\S+) it/s, (\S+) samples/s"
)

# synth_args: 64 training images × 5 captions in batches of 16
PER_EPOCH = 64 * 5 // 16


def _csv(run):
    with open(os.path.join(run, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_lines_every_log_step_when_stdout_is_not_a_terminal(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    assert main(synth_args + ["--logger_name", run, "--num_epochs", "2", "--log_step", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    progress = [ln for ln in out if ln.startswith("Epoch: [")]
    matches = [LINE.fullmatch(ln) for ln in progress]
    assert progress and all(matches), progress

    # every 8th iteration counted over the run (as the original train.py does), located in its epoch
    expected = [((it - 1) // PER_EPOCH + 1, (it - 1) % PER_EPOCH + 1, it) for it in range(8, 2 * PER_EPOCH + 1, 8)]
    assert expected == [(1, 8, 8), (1, 16, 16), (2, 4, 24), (2, 12, 32), (2, 20, 40)]  # the arithmetic above
    got = [(int(m[1]), int(m[2]), int(m[4])) for m in matches]
    assert got == expected
    assert all(int(m[3]) == PER_EPOCH for m in matches)

    # each epoch's lines come before its summary line
    summary_1 = next(i for i, ln in enumerate(out) if ln.startswith("epoch 1/2"))
    assert [out.index(ln) < summary_1 for ln in progress] == [True, True, False, False, False]

    rows = _csv(run)
    for m in matches:
        assert float(m[7]) == pytest.approx(float(rows[int(m[1]) - 1]["lr"]))
        assert float(m[8]) > 0 and float(m[9]) == pytest.approx(16 * float(m[8]), rel=0.02)  # 16 pairs a batch
    # the last line of epoch 2 is its last iteration: its epoch mean is the epoch's training loss
    last = matches[-1]
    assert float(last[6]) == pytest.approx(float(rows[1]["train_loss"]), abs=1e-3)
    # "loss" is the mean since the previous line of the epoch: epoch 2's windows are 4, 8 and 8 iterations
    windows = [float(m[5]) for m in matches[2:]]
    assert (4 * windows[0] + 8 * windows[1] + 8 * windows[2]) / 20 == pytest.approx(float(last[6]), abs=2e-3)
    assert float(matches[2][5]) == float(matches[2][6])  # the first line of an epoch: window = epoch so far


def test_bar_instead_of_lines_on_a_terminal(tmp_path, synth_args, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(synth_args + ["--logger_name", str(tmp_path / "run"), "--log_step", "4"]) == 0
    out = capsys.readouterr().out
    assert "Epoch: [" not in out
    assert "epoch 1/1: " in out and f"| 0/{PER_EPOCH} " in out  # tqdm's bar: its description and count
