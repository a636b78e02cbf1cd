"""The benchmark rows and tools on the CPU at tiny sizes: every row runs, the CLIP anchor computes
InfoNCE's function, ``pytest benchmarks --benchmark-only``, ``cpu_target.py`` and ``report.py``
work end to end."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "benchmarks")


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bc = _module("bench_common")


def _env(**extra):
    return dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra
    )


def _script(name, *args):
    """``python benchmarks/<name>.py args`` on one thread; its completed process, checked."""
    run = subprocess.run(
        [sys.executable, os.path.join(BENCH, f"{name}.py"), *map(str, args)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _grads(run, x, y):
    run()
    return x.grad.clone(), y.grad.clone()


def _unequal_inputs(B, D, seed=0):
    """Two float64 (B, D) leaves whose x rows have norms 0.5…2: a row compared with its formula
    must normalise (unit-norm inputs would hide a missing normalisation)."""
    x, y = bc.make_inputs(B, D, torch.float64, torch.device("cpu"), seed)
    with torch.no_grad():
        x.mul_(torch.linspace(0.5, 2, B, dtype=torch.float64)[:, None])
    return x, y


def _assert_same_grads(run_a, run_b, x, y, scale=1.0):
    """The two rows' input gradients agree (run_a's = scale × run_b's); run_b's are not zero."""
    ga, gb = _grads(run_a, x, y), _grads(run_b, x, y)
    assert gb[0].abs().sum() > 0
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b * scale, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", ["dense", "chunked"])
def test_dense_clip_anchor_is_infonce(impl):
    """The anchor InfoNCE is measured against computes the same loss and gradients."""
    x, y = _unequal_inputs(96, 16)
    value = bc.clip_formula(x, y)
    assert bc.make_loss("InfoNCE", impl)(x, y).item() == pytest.approx(value.item(), rel=1e-10)
    _assert_same_grads(bc.anchor_fn("dense-CLIP", x, y), bc.loss_fn("InfoNCE", impl, x, y), x, y)


@pytest.mark.parametrize("loss", list(bc.ALL_LOSSES))
def test_small_batch_formulas_are_the_losses(loss):
    """Each formula small_batch.py measures a loss against computes that loss and its gradients."""
    sb = _module("small_batch")
    x, y = _unequal_inputs(24, 8, seed=3)
    lib, formula = bc.make_loss(loss, "dense"), sb.formula(loss)
    assert lib(x, y).item() > 0
    assert formula(x, y).item() == pytest.approx(lib(x, y).item(), rel=1e-10)
    _assert_same_grads(bc.fwd_bwd(x, y, lambda: formula(x, y)), bc.fwd_bwd(x, y, lambda: lib(x, y)), x, y)


@pytest.mark.parametrize("loss", list(bc.ALL_LOSSES))
def test_small_batch_labelled_formulas_are_the_losses(loss):
    sb = _module("small_batch")
    x, y = bc.make_inputs(24, 8, torch.float64, torch.device("cpu"), seed=5)
    labels = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(1))
    lib, formula = bc.make_loss(loss, "dense"), sb.labelled_formula(loss)
    value = lib(x, labels, ref_emb=y, ref_labels=labels)
    assert value.item() > 0
    assert formula(x, y, labels).item() == pytest.approx(value.item(), rel=1e-10)


@pytest.mark.parametrize("labelled", [[], ["--labelled"]], ids=["paired", "labelled"])
def test_small_batch_script(labelled):
    run = _script("small_batch", "--B", 16, "--D", 8, "--rounds", 2, "--reps", 1, *labelled)
    rows = [ln.split() for ln in run.stdout.splitlines()[2:]]
    assert [r[2] for r in rows] == list(bc.ALL_LOSSES)
    assert all(r[0] == "8" and r[1] == "16" and r[5].endswith("×") and int(r[6]) > 0 for r in rows)


@pytest.mark.parametrize("loss", ["MH", "SH"])
def test_cosine_formula_anchors_are_the_losses(loss):
    """The cosine-formula anchors compute the default loss on rows of any norm (summed, not averaged)."""
    B = 32
    x, y = _unequal_inputs(B, 16, seed=4)
    anchor, lib = bc.anchor_fn(f"cosine-formula-{loss}", x, y), bc.loss_fn(loss, "dense", x, y)
    _assert_same_grads(anchor, lib, x, y, scale=2 * B)


def test_every_cpu_row_runs():
    x, y = bc.make_inputs(40, 8, torch.float32, torch.device("cpu"))
    for loss in bc.ALL_LOSSES:
        for impl in ("dense", "chunked"):
            bc.loss_fn(loss, impl, x, y)()
            assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, (loss, impl)
    for name in bc.ANCHORS:
        if name in ("compiled-dense-MH", "Inf-CL"):  # compiles for ~20 s; CUDA only
            continue
        bc.anchor_fn(name, x, y)()
    assert {"LSE", "InfoNCE"} <= set(bc.ALL_LOSSES) and not {"LSE", "InfoNCE"} & set(bc.LOSSES)


def test_inf_cl_anchor_refuses_the_cpu_cleanly():
    x, y = bc.make_inputs(8, 16, torch.float32, torch.device("cpu"))
    with pytest.raises(RuntimeError):  # the benchmark turns it into a skip with the reason
        bc.anchor_fn("Inf-CL", x, y)()


def test_benchmark_only_then_report(tmp_path):
    out = tmp_path / "bench.json"
    env = _env(VSE_BENCH_DEVICE="cpu", VSE_BENCH_SIZES="64", VSE_BENCH_D="16", VSE_BENCH_COMPILE="0")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "--benchmark-only",
            "-p",
            "no:cacheprovider",
            "-k",
            "InfoNCE or LSE or CLIP or product",
            f"--benchmark-json={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {b["extra_info"]["row"] for b in json.loads(out.read_text())["benchmarks"]}
    assert rows == {"LSE/dense", "LSE/chunked", "InfoNCE/dense", "InfoNCE/chunked", "dense-CLIP", "product"}
    md = tmp_path / "table.md"
    rep = subprocess.run(
        [sys.executable, os.path.join(BENCH, "report.py"), str(out), "--md", str(md)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = md.read_text()
    assert "| InfoNCE/chunked |" in text and "| dense-CLIP |" in text
    assert "- InfoNCE/chunked at B=64: vs dense-CLIP: time" in text


@pytest.mark.parametrize(
    "loss,ref,beside", [("InfoNCE", "dense-CLIP", "InfoNCE/dense"), ("MH", "MH/dense", "dense-formula-MH")]
)
def test_cpu_target_script(loss, ref, beside):
    run = _script("cpu_target", "--loss", loss, "--B", 64, "--D", 16, "--rounds", 2)
    table = [ln.split()[0] for ln in run.stdout.splitlines() if ln and not ln.startswith(("#", "row"))]
    assert table[:3] == [ref, f"{loss}/chunked", beside]  # the reference first, the rows interleaved
    limit = "1×" if loss == "InfoNCE" else "0.5×"
    assert f"target against {ref}: memory ≤ 1/8: " in run.stdout and f"time ≤ {limit}: " in run.stdout


def _collected(*args):
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=_env(VSE_BENCH_DEVICE="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # --collect-only -q (addopts): one node id per line, "folder/file.py::test[...]"
    return {line.split("/")[0] for line in run.stdout.splitlines() if ".py::" in line}


def test_benchmark_only_from_the_root_runs_the_benchmarks():
    assert _collected("--benchmark-only") == {"benchmarks"}
    assert _collected() == {"tests"}
