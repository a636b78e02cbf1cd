"""compare_losses.py: its stored results, written atomically and read back with one-line errors."""

import json
import os
import sys

import compare_losses
import pytest

METRICS = {k: 90.0 for k in compare_losses.SHOWN}


def _fake_train(monkeypatch, calls):
    """train_coco.py replaced by a process that writes its test_metrics.json (nothing is trained)."""

    def call(cmd):
        calls.append(cmd)
        run = cmd[cmd.index("--logger_name") + 1]
        os.makedirs(run, exist_ok=True)
        with open(os.path.join(run, "test_metrics.json"), "w") as f:
            f.write(json.dumps(METRICS))
        return 0

    monkeypatch.setattr(compare_losses.subprocess, "call", call)


def test_times_are_written_atomically_and_runs_not_repeated(tmp_path, monkeypatch):
    calls = []
    _fake_train(monkeypatch, calls)
    run = str(tmp_path / "frozen" / "sh_seed0")
    m = compare_losses.run_once("train_coco.py", run, 0, [], "frozen sh")
    assert m["rsum"] == 90.0 and m["time_s"] >= 0 and m["cpu_s"] >= 0 and len(calls) == 1
    assert sorted(os.listdir(run)) == ["test_metrics.json", "times.json"]  # no temporary file left
    assert compare_losses.run_once("train_coco.py", run, 0, [], "frozen sh") == m and len(calls) == 1

    # a write cut short leaves no torn times.json behind (it would stop every later run)
    real_dump = json.dump

    def torn(obj, f, **kw):
        f.write('{"time_s": 1')
        raise KeyboardInterrupt

    other = str(tmp_path / "frozen" / "sh_seed1")
    monkeypatch.setattr(json, "dump", torn)
    with pytest.raises(KeyboardInterrupt):
        compare_losses.run_once("train_coco.py", other, 1, [], "frozen sh")
    monkeypatch.setattr(json, "dump", real_dump)
    assert not os.path.exists(os.path.join(other, "times.json")) and not [
        n for n in os.listdir(other) if n.startswith(".tmp")
    ]


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("times.json", '{"time_s": 12', "malformed JSON"),
        ("test_metrics.json", '{"i2t_r1": 9', "malformed JSON"),
        ("test_metrics.json", '{"i2t_r1": 90.0}', "no number for i2t_r5"),
        ("times.json", "[1, 2]", "no number for time_s, cpu_s"),
    ],
)
def test_malformed_stored_result_is_one_line(tmp_path, monkeypatch, capsys, name, content, problem):
    out = tmp_path / "runs"
    run = out / "frozen" / "sh_seed0"
    run.mkdir(parents=True)
    (run / "test_metrics.json").write_text(json.dumps(METRICS))
    (run / "times.json").write_text(json.dumps({"time_s": 1.0, "cpu_s": 1.0}))
    (run / name).write_text(content)
    monkeypatch.setattr(compare_losses.subprocess, "call", lambda cmd: pytest.fail("a stored run was redone"))
    monkeypatch.setattr(sys, "argv", ["compare_losses.py", "--variants", "sh", "--seeds", "0", "--out", str(out)])
    with pytest.raises(SystemExit) as e:
        compare_losses.main()
    message = str(e.value.code)
    assert message.startswith(f"error: {run / name}: ") and problem in message and len(message.splitlines()) == 1
    assert f"delete {run} to redo the run" in message
