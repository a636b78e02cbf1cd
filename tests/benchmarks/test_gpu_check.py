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
