"""train_coco.py's collapse alarm: one line when MH collapses, the iteration in metrics.csv, once per
run (also across --resume), and silence on an SH run that dips towards a collapse and recovers."""

import csv
import os

from vse.training import main

ALARM = "warning: the embeddings have collapsed"


def _column(run):
    with open(os.path.join(run, "metrics.csv")) as f:
        return [r["collapse_alarm"] for r in csv.DictReader(f)]


def _train(synth_args, run, *extra):
    # 20 iterations per epoch (64 images × 5 captions / 16); a window of 20 iterations
    assert main(synth_args + ["--logger_name", run, "--learning_rate", "0.003", "--collapse_window", "20", *extra]) == 0


def test_mh_collapse_is_reported_once(tmp_path, synth_args, capsys):
    run = str(tmp_path / "mh")
    _train(synth_args, run, "--max_violation", "--num_epochs", "2")
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ALARM in ln]
    assert len(lines) == 1, out
    assert "SHToMHWarmup" in lines[0] and "learning rate" in lines[0] and "margin 0.2" in lines[0]
    assert "--warmup_steps" in lines[0] and "--loss lp" in lines[0]  # the remedies as this script's flags
    assert "dev recall is at chance level" not in out  # the alarm has said it, with the remedies
    fired = _column(run)
    # collapsed from the first few iterations, so the window of 20 ends early in the second epoch
    assert fired[0] == "" and 20 < int(fired[1]) <= 40
    # resumed, the run goes on collapsed: the alarm stays said
    _train(synth_args, run, "--resume", os.path.join(run, "checkpoint.pth.tar"), "--num_epochs", "3")
    assert ALARM not in capsys.readouterr().out
    assert _column(run) == fired + fired[1:]


def test_sh_run_that_recovers_is_not_reported(tmp_path, synth_args, capsys):
    # at this learning rate SH's embeddings meet within 0.01 for a few iterations, then spread out
    run = str(tmp_path / "sh")
    _train(synth_args, run, "--num_epochs", "2")
    assert ALARM not in capsys.readouterr().out
    assert _column(run) == ["", ""]


def test_collapse_window_option(tmp_path, synth_args, capsys):
    run = str(tmp_path / "off")
    assert (
        main(
            synth_args + ["--logger_name", run, "--max_violation", "--learning_rate", "0.003", "--collapse_window", "0"]
        )
        == 0
    )
    assert ALARM not in capsys.readouterr().out and _column(run) == [""]
    assert main(synth_args + ["--logger_name", run, "--collapse_window", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --collapse_window: must be >= 0, got -1"]
