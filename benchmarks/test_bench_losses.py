"""Forward+backward time and peak memory of every loss × impl, beside the anchors, in one run.

    pytest benchmarks --benchmark-only --benchmark-json out.json
    python benchmarks/report.py out.json --md docs/benchmarks/cpu_table.md --plots docs/benchmarks

Rows (``extra_info["row"]``):

- ``<loss>/<impl>``: a vse_losses class (SH, MH, TopK5, Lp2, Mix0.5 with margin 0.2; LSE, τ 0.05,
  margin 0.2; InfoNCE, τ 0.07, margin 0; default ``MeanReducer``, cosine) called in the paired
  form ``loss(img, cap)``, impl dense, chunked and, with CUDA and triton, triton;
- the anchors of ``docs/design.md`` (``bench_common.ANCHORS``): the dense formula
  (MH and SH), its ``torch.compile``, PML BatchHardMiner + TripletMarginLoss, the product
  ``x @ y.T`` alone (forward), CLIP's dense formula (``dense-CLIP``, InfoNCE's reference) and,
  on CUDA where the ``inf_cl`` package is importable, Inf-CL (skipped with the reason elsewhere).

Each benchmark first calls its row once (warm-up: compilation, autotuning), then once more to
measure peak memory (``extra_info["peak_memory_mib"]``, method in
``extra_info["memory_method"]``), then times ``rounds`` calls with pytest-benchmark's pedantic mode.
A row that runs out of memory is skipped with the reason, so it has no entry in the JSON.
"""

from __future__ import annotations

import os
import time

import bench_common as bc
import pytest
import torch

from conftest import bench_config

CFG = bench_config()
DEV = CFG["device"]
ON_GPU = DEV.type == "cuda"
TRITON_OK, TRITON_WHY = bc.triton_impl_available() if ON_GPU else (False, "no CUDA device")
IMPLS = ["dense", "chunked"] + (["triton"] if ON_GPU else [])

# rows that also run at the "big" CPU size (the MH and InfoNCE targets and what their ratios are
# taken against)
BIG_ROWS = {
    "MH/dense",
    "MH/chunked",
    "MH/triton",
    "dense-formula-MH",
    "product",
    "InfoNCE/chunked",
    "InfoNCE/triton",
    "dense-CLIP",
    "Inf-CL",
}


def _cases():
    out = []
    for dtype in CFG["dtypes"]:
        for B in CFG["sizes"]:
            rows = [("anchor", a, None) for a in bc.ANCHORS]
            rows += [("loss", f"{loss}/{impl}", (loss, impl)) for loss in bc.ALL_LOSSES for impl in IMPLS]
            for kind, row, spec in rows:
                if B in CFG["big_sizes"] and row not in BIG_ROWS:
                    continue
                if row == "compiled-dense-MH" and not CFG["compile"]:
                    continue
                if row == "Inf-CL" and not ON_GPU:  # a CUDA-only anchor: no skipped row per CPU size
                    continue
                dt = str(dtype).replace("torch.", "")
                out.append(pytest.param(kind, row, spec, dtype, B, id=f"{row}-{dt}-B{B}"))
    return out


def _rounds(t_call: float) -> int:
    if ON_GPU:
        return 3 if t_call > 1.0 else 10 if t_call > 0.02 else 50
    return 2 if t_call > 2.0 else 3 if t_call > 0.5 else 5 if t_call > 0.05 else 10


@pytest.mark.parametrize("kind,row,spec,dtype,B", _cases())
def test_bench(benchmark, kind, row, spec, dtype, B):
    D = CFG["D"]
    if spec is not None and spec[1] == "triton" and not TRITON_OK:
        pytest.skip(f"triton impl unavailable: {TRITON_WHY}")
    x, y = bc.make_inputs(B, D, dtype, DEV)
    try:
        if kind == "anchor":
            # tile the product where B×B would take more than a quarter of the GPU
            cap = torch.cuda.get_device_properties(DEV).total_memory // 4 if ON_GPU else None
            run = bc.anchor_fn(row, x, y, product_max_bytes=cap)
        else:
            run = bc.loss_fn(spec[0], spec[1], x, y)
        step = (lambda: (run(), bc.sync(DEV))) if ON_GPU else run
        step()  # warm-up: compilation, autotuning, first-touch of buffers
        t0 = time.perf_counter()
        peak = bc.peak_memory_mib(step, DEV, clear=(x, y))
        t_call = time.perf_counter() - t0
    except bc.OOM_ERRORS as e:
        msg = f"out of memory: {str(e)[:120]}"
        del e
        bc.free_memory(DEV)
        pytest.skip(msg)
    except ImportError as e:  # a triton kernel module not written yet
        if spec is not None and spec[1] == "triton":
            pytest.skip(f"triton kernel missing: {e}")
        raise
    except Exception as e:  # noqa: BLE001  an anchor that cannot run here (no compiler, no PML)
        if kind == "anchor":
            pytest.skip(f"{row} unavailable: {type(e).__name__}: {str(e)[:200]}")
        raise
    grad_mib = 0.0 if row == "product" else 2 * B * D * torch.finfo(dtype).bits / 8 / 2**20
    dt = str(dtype).replace("torch.", "")
    benchmark.group = f"{DEV.type} {dt} D={D} B={B}"
    benchmark.extra_info.update(
        {
            "row": row,
            "kind": kind,
            "loss": spec[0] if spec else None,
            "impl": spec[1] if spec else None,
            "B": B,
            "D": D,
            "dtype": dt,
            "device": bc.device_name(DEV),
            "device_type": DEV.type,
            "peak_memory_mib": round(peak, 3),
            "grad_memory_mib": round(grad_mib, 3),
            "memory_method": bc.MEMORY_METHOD[DEV.type],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        }
    )
    benchmark.pedantic(step, rounds=_rounds(t_call), iterations=1, warmup_rounds=0)
