"""``python -m vse_losses.check``, the self-check a user runs: it passes here, in a subprocess, for
every loss × impl (triton in its CPU interpreter); it fails, naming the check, when one
implementation returns a wrong value; its timing table and its argument errors."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from vse_losses import check, ops
from vse_losses.ops import triton_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_lines(out: str) -> list[list[str]]:
    """The check lines of the output, split: [loss, impl, dtype, …, status]."""
    labels = {spec.label for spec in check.LOSSES}
    return [line.split() for line in out.splitlines() if line.split(" ", 1)[0] in labels]


def test_quick_run_passes_every_loss_and_impl(tmp_path):
    report = tmp_path / "check.json"
    env = dict(
        os.environ,
        TRITON_INTERPRET="1",
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    out = subprocess.run(
        [sys.executable, "-m", "vse_losses.check", "--quick", "--device", "cpu", "--json", str(report)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    lines = check_lines(out.stdout)
    impls = ["ref", "dense", "chunked"] + (["triton"] if triton_available() else [])
    for spec in check.LOSSES:
        for impl in impls:
            for dtype in ("float32", "float64") if impl != "triton" else ("float32",):
                if impl == "dense" and dtype == "float64":
                    continue  # the reference itself
                if impl == "ref" and dtype == "float32":
                    continue
                mine = [p for p in lines if p[0] == spec.label and p[1] == impl and p[2] == dtype]
                assert mine and all(p[-1] == "PASS" for p in mine), (spec.label, impl, dtype, mine)
                # the paired call and the labelled call, each at least at the small size
                cases = {" ".join(p[3 : p.index("value")]) for p in mine}
                assert {"paired B=37", "labels B=29 M=41"} <= cases, cases
    assert "not runnable" not in out.stdout or not triton_available()
    assert "tolerances (atol, rtol): float32 (1e-06, 1e-05)" in out.stdout  # the stated tolerance
    data = json.loads(report.read_text())
    assert data["ok"] and not data["failed"] and data["timing"] == []
    assert {c["status"] for c in data["checks"]} == {"PASS"} and len(data["checks"]) == len(lines)
    assert data["torch"] == torch.__version__ and data["date"] and data["device"].startswith("CPU")


def test_a_wrong_implementation_fails_and_is_named(monkeypatch, capsys, tmp_path):
    # the chunked hinge norms 1 % too large: SH, Lp and the mix's sum part are wrong with impl="chunked"
    right = ops.CHUNKED.hinge_norm_pairs

    def wrong(*args, **kwargs):
        return tuple(1.01 * t for t in right(*args, **kwargs))

    monkeypatch.setattr(ops, "CHUNKED", dataclasses.replace(ops.CHUNKED, hinge_norm_pairs=wrong))
    report = tmp_path / "check.json"
    rc = check.main(["--quick", "--device", "cpu", "--impls", "dense,chunked", "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 1
    failed = {(p[0], p[1]) for p in check_lines(out) if p[-1] != "PASS"}
    assert failed == {
        ("SumHingeLoss()", "chunked"),
        ("LpViolationLoss(p=2.0)", "chunked"),
        ("MixedViolationLoss(mix=0.5)", "chunked"),
    }, failed
    assert [p for p in check_lines(out) if p[0] == "MaxViolationLoss()" and p[-1] == "PASS"]
    assert "FAILED:" in out and "SumHingeLoss() impl=chunked float32 paired B=37: value" in out
    data = json.loads(report.read_text())
    assert not data["ok"] and "SumHingeLoss() impl=chunked float64 labels B=29 M=41" in data["failed"]


def test_an_error_is_a_failure(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(ops, "CHUNKED", dataclasses.replace(ops.CHUNKED, lse_pairs=broken))
    rc = check.main(["--quick", "--device", "cpu", "--impls", "chunked", "--dtypes", "float32"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "InfoNCELoss(temperature=0.07) impl=chunked float32 paired B=37: RuntimeError: kernel exploded" in out


def test_timing_rows_side_by_side():
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.randn(16, 8, requires_grad=True)
    rows = check.time_rows(torch.device("cpu"), x, y, budget_s=0.0)
    names = [r["row"] for r in rows]
    assert names[:3] == [
        "product x @ y.T (forward)",
        "formula-MH (VSE++ criterion, max)",
        "formula-SH (VSE++ criterion, sum)",
    ]
    assert names[3:] == [spec.label for spec in check.LOSSES]
    assert all(r["rounds"] == 3 and r["ms"] > 0 for r in rows)
    assert rows[0]["x_product"] == 1.0 and rows[1]["x_formula_mh"] == 1.0 and rows[2]["x_formula_sh"] == 1.0
    assert {r["impl"] for r in rows[3:]} == {"dense"}  # "auto" on the CPU below 512² pairs
    assert x.grad is None and y.grad is None


def test_vsepp_formula_is_the_max_and_sum_losses():
    from pytorch_metric_learning.reducers import SumReducer

    import vse_losses

    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, 6, dtype=torch.float64)
    mh = vse_losses.MaxViolationLoss(reducer=SumReducer())(x, y)
    sh = vse_losses.SumHingeLoss(reducer=SumReducer())(x, y)
    torch.testing.assert_close(check.vsepp_formula(x, y, True), mh)
    torch.testing.assert_close(check.vsepp_formula(x, y, False), sh)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sizes", "0"], "argument --sizes: expected comma-separated positive integers"),
        (["--sizes", "12,x"], "argument --sizes: expected comma-separated positive integers"),
        (["--dim", "1,2"], "argument --dim: expected one positive integer"),
        (["--impls", "fast"], "argument --impls: expected a comma-separated subset of dense,chunked,triton"),
        (["--dtypes", "float8"], "argument --dtypes: expected a comma-separated subset of"),
        (["--timing-dtype", "float64"], "argument --timing-dtype: invalid choice"),
        (["--device", "tpu"], "argument --device: expected auto, cpu, cuda or cuda:N"),
        (["--json", "/no/such/dir/out.json"], "argument --json: directory /no/such/dir does not exist"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().splitlines()[-1].startswith("python -m vse_losses.check: error:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exc:
        check.main(["--device", "cuda"])
    assert exc.value.code == 2
    assert "argument --device: CUDA is not available here" in capsys.readouterr().err
