"""benchmarks/gpu_check.py, the one command a GPU session runs, on the CPU (``--cpu-smoke``, triton
in its interpreter): a broken script would waste the few minutes of device time it is written for."""

import json
import os
import subprocess
import sys

import pytest

from vse_losses.ops import triton_available

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not triton_available(), reason="no triton the kernels are checked with (>= 3.3)")
def test_cpu_smoke_checks_tables_and_sweep(tmp_path):
    md, js = tmp_path / "gpu.md", tmp_path / "gpu.json"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "gpu_check.py"),
            "--cpu-smoke",
            "--md",
            str(md),
            "--json",
            str(js),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(js.read_text())
    assert report["checks"] and not [c for c in report["checks"] if c["status"] in ("FAIL", "ERROR", "MISSING")]
    assert any(c["status"] == "PASS" and c["impl"] == "triton" for c in report["checks"])
    assert any(r["status"] == "ok" for r in report["table"])
    assert set(report["native_products"]) == {"mm_out_dtype", "addmm_out_dtype_in_place"}
    kernels = {r["kernel"] for r in report["tile_sweep"]}
    assert {"negative_max cosine", "MH backward, one side", "pairs forward p=2"} <= kernels
    assert "Tile sweep" in md.read_text()


def _session(tmp_path, *args, python=sys.executable):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=python, OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_session.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_gpu_session_script_on_the_cpu(tmp_path):
    """The session script runs the self-check and gpu_check, writing each output under $OUT."""
    run = _session(tmp_path, "--cpu-smoke")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    kinds = ["gpu_check_cpu_*.json", "gpu_check_cpu_*.log", "gpu_check_cpu_*.md", "self_check_cpu_*.json"]
    for pattern in kinds + ["self_check_cpu_*.txt"]:
        assert list(tmp_path.glob(pattern)), (pattern, names)
    assert len(names) <= 8  # few files: a remote runner may bring back only a handful from $OUT
    assert json.loads(next(tmp_path.glob("self_check_cpu_*.json")).read_text())
    assert "self-check exit 0, gpu_check exit 0" in run.stdout


def test_gpu_session_script_fails_when_a_step_fails(tmp_path):
    assert _session(tmp_path, "--gpu").returncode == 2  # an unknown argument
    run = _session(tmp_path, "--cpu-smoke", python="false")  # no step can run
    assert run.returncode != 0 and "self-check exit 1" in run.stdout


def test_the_time_prediction_follows_the_rows_growth(monkeypatch):
    """A row's next size is predicted from the growth of its last two (B² to B³), so that a row
    whose time grows faster than B² is stopped before it overruns the budget."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import gpu_check

    row = gpu_check.Row("SH/triton", "loss", ("SH", "triton"))
    assert gpu_check._growth(row) == 2.0  # nothing measured
    row.prev, row.last = (1000, 1.0), (2000, 4.0)
    assert gpu_check._growth(row) == pytest.approx(2.0)
    row.prev, row.last = (1000, 1.0), (2000, 6.0)
    assert gpu_check._growth(row) == pytest.approx(2.585, abs=1e-3)
    row.prev, row.last = (1000, 1.0), (2000, 100.0)
    assert gpu_check._growth(row) == 3.0
    row.prev, row.last = (1000, 1.0), (2000, 1.5)  # launch-bound sizes: never below B²
    assert gpu_check._growth(row) == 2.0
