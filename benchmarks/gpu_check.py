"""One command for a CUDA machine: check every impl against dense, then time MH/SH/Lp up to B=2^20
and InfoNCE up to B=65,536.

    python benchmarks/gpu_check.py                  # CUDA: checks + table, under 5 minutes
    python benchmarks/gpu_check.py --cpu-smoke      # the same code on the CPU at tiny sizes (about 45 s)
    python benchmarks/gpu_check.py --md docs/benchmarks/gpu_h100.md --json out.json

1. Checks. Every loss (SH, MH, TopK5, Lp2, Mix0.5, LSE, InfoNCE) × impl (chunked; triton where
   CUDA and triton are present, or on the CPU under ``TRITON_INTERPRET=1`` in fp32) against
   ``impl="dense"``, value and both input gradients, in float32 and bfloat16, on a paired batch whose size is not a tile
   multiple, on a small paired batch (the one-launch path for B ≤ 128) and on a labelled batch
   with B ≠ M and repeated labels (PML call form).
   float32: relative error ≤ 1e-5 against dense float32 (value; gradients: max-abs error over the
   max-abs of dense's gradient). bfloat16: no further from the float64 result on the same (rounded)
   inputs than dense bfloat16 is, plus 1e-3 (value, relative) and 1e-2 (gradients, relative max-abs).
2. Table. Forward+backward time (median, CUDA events) and peak memory of MH, SH and Lp2 (p=2) with
   every impl, and of the anchors (the dense formula for MH and SH, torch.compile of the MH formula,
   PML BatchHardMiner+TripletMarginLoss, the product ``x @ y.T`` alone) for B = 128 … 1,048,576,
   D=1024, bf16, and of paired InfoNCE (τ = 0.07; triton, chunked, the dense CLIP formula and, where
   ``inf_cl`` imports, Inf-CL) up to B=65,536. Every row gets the ratio to the product measured
   in the same run. A row stops at its first out-of-memory error; a size is skipped when the row's
   time, predicted from its previous size as B², exceeds ``--per-call-cap-s`` or what is left of
   ``--budget-s``. Where B×B does not fit in a quarter of the GPU the product is computed in row
   tiles into one buffer (the same flops).
   "peak" is the memory of one call beyond the inputs (both input gradients included); "extra" is
   peak minus the gradients: the memory beyond the inputs and their gradients.
3. The GPU targets (``TARGETS``: time as a multiple of the product, extra memory, milliseconds),
   as PASS/MISS lines.
4. A tile sweep: the fused Triton kernels alone at B=65,536 with their default tiles and the
   alternatives that also compile without spills, as ratios to the product of the same shape, so
   that one GPU session can choose the defaults (``--no-sweep`` leaves it out; about 60 s). Where an
   alternative hardest-negative tile beats the default by over 3 %, MaxViolationLoss is timed
   again at B=65,536 with it and with the default, side by side.

Exit status: 1 when a check fails or errors, else 0 (missed speed targets do not fail it).
Needs torch (and triton for the triton rows); the PML anchor is left out when
pytorch-metric-learning does not import (vse_losses itself needs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import traceback

T_START = time.time()
if "--cpu-smoke" in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a shared CPU: see benchmarks/conftest.py

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402

GPU_SIZES = [128, 1024, 4096, 16384, 65536, 262144, 1048576]
SMOKE_SIZES = [64, 256, 1024]
TABLE_LOSSES = ["MH", "SH", "Lp2"]
CHECK_LOSSES = list(bc.LOSSES) + list(bc.TEMPERATURE_LOSSES)
# InfoNCE's rows and anchors stop at its target's size: their time grows as B² like the others', and
# the budget goes to the MH/SH/Lp rows above it
INFONCE_MAX_B = 65536


def log(*a) -> None:
    print(*a, flush=True)


def elapsed() -> float:
    return time.time() - T_START


# --------------------------------------------------------------------------------------------
# 1. Checks against dense
# --------------------------------------------------------------------------------------------


def _call(loss: str, impl: str, x0, y0, dtype, labels=None, ref_labels=None):
    x = x0.detach().to(dtype).requires_grad_(True)
    y = y0.detach().to(dtype).requires_grad_(True)
    fn = bc.make_loss(loss, impl)
    v = fn(x, y) if labels is None else fn(x, labels, ref_emb=y, ref_labels=ref_labels)
    v.backward()
    return float(v.detach().double()), x.grad.detach().double(), y.grad.detach().double()


def _errs(a, b):
    """(relative value error, relative max-abs gradient error) of result a against b."""
    ve = abs(a[0] - b[0]) / max(abs(b[0]), 1e-12)
    ge = 0.0
    for ga, gb in zip(a[1:], b[1:]):
        ge = max(ge, float((ga - gb).abs().max()) / max(float(gb.abs().max()), 1e-30))
    return ve, ge


def run_checks(dev: torch.device, smoke: bool, impls: list[str]) -> list[dict]:
    D = 16 if smoke else 1024
    g = torch.Generator(device="cpu").manual_seed(1)
    Bp = 37 if smoke else 300
    Bs = 13 if smoke else 100  # the one-launch small-batch path (B ≤ 128)
    Bl, Ml = (29, 41) if smoke else (257, 383)
    cases = {
        f"paired B={Bp}": (torch.randn(Bp, D, generator=g), torch.randn(Bp, D, generator=g), None, None),
        f"paired B={Bs}": (torch.randn(Bs, D, generator=g), torch.randn(Bs, D, generator=g), None, None),
        f"labels B={Bl} M={Ml}": (
            torch.randn(Bl, D, generator=g),
            torch.randn(Ml, D, generator=g),
            torch.randint(0, Bl // 3, (Bl,), generator=g),
            torch.randint(0, Bl // 3, (Ml,), generator=g),
        ),
    }
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    results = []
    log(f"\n== checks against impl='dense' (D={D}, impls {impls}) ==")
    log(
        f"{'case':<22} {'loss':<7} {'dtype':<9} {'impl':<8} "
        f"{'value err':>10} {'grad err':>10} {'dense err':>10}  status"
    )
    for cname, (x0, y0, l0, r0) in cases.items():
        x0, y0 = x0.to(dev), y0.to(dev)
        lab = None if l0 is None else l0.to(dev)
        rlab = None if r0 is None else r0.to(dev)
        for loss in CHECK_LOSSES:
            for dtype in (torch.float32, torch.bfloat16):
                dname = str(dtype).replace("torch.", "")
                try:
                    dense = _call(loss, "dense", x0, y0, dtype, lab, rlab)
                    ref64 = (
                        _call(loss, "dense", x0.to(dtype), y0.to(dtype), torch.float64, lab, rlab)
                        if dtype != torch.float32
                        else None
                    )
                except Exception as e:  # noqa: BLE001
                    results.append(
                        {
                            "case": cname,
                            "loss": loss,
                            "dtype": dname,
                            "impl": "dense",
                            "status": "ERROR",
                            "error": f"{type(e).__name__}: {e}",
                        }
                    )
                    log(f"{cname:<22} {loss:<7} {dname:<9} {'dense':<8} ERROR {type(e).__name__}: {str(e)[:150]}")
                    continue
                dense_err = _errs(dense, ref64) if ref64 is not None else (0.0, 0.0)
                for impl in impls:
                    rec = {"case": cname, "loss": loss, "dtype": dname, "impl": impl}
                    if impl == "triton" and dev.type == "cpu" and (not interp or dtype != torch.float32):
                        continue  # the interpreter has no bf16 dot
                    try:
                        got = _call(loss, impl, x0, y0, dtype, lab, rlab)
                    except ImportError as e:
                        rec.update(status="MISSING", error=f"{type(e).__name__}: {e}")
                        results.append(rec)
                        log(f"{cname:<22} {loss:<7} {dname:<9} {impl:<8} {'':>10} {'':>10} {'':>10}  MISSING ({e})")
                        continue
                    except Exception as e:  # noqa: BLE001
                        rec.update(status="ERROR", error=f"{type(e).__name__}: {e}")
                        results.append(rec)
                        log(f"{cname:<22} {loss:<7} {dname:<9} {impl:<8} ERROR {type(e).__name__}: {str(e)[:150]}")
                        if os.environ.get("VSE_GPU_CHECK_TRACEBACK"):
                            traceback.print_exc()
                        continue
                    if dtype == torch.float32:
                        ve, ge = _errs(got, dense)
                        ok = ve <= 1e-5 and ge <= 1e-5
                    else:
                        ve, ge = _errs(got, ref64)
                        ok = ve <= dense_err[0] + 1e-3 and ge <= dense_err[1] + 1e-2
                    rec.update(
                        status="PASS" if ok else "FAIL",
                        value_err=ve,
                        grad_err=ge,
                        dense_value_err=dense_err[0],
                        dense_grad_err=dense_err[1],
                    )
                    results.append(rec)
                    de = f"{dense_err[1]:.2e}" if ref64 is not None else "-"
                    log(f"{cname:<22} {loss:<7} {dname:<9} {impl:<8} {ve:>10.2e} {ge:>10.2e} {de:>10}  {rec['status']}")
    n = {s: sum(r["status"] == s for r in results) for s in ("PASS", "FAIL", "ERROR", "MISSING")}
    log(
        f"checks: {n['PASS']} pass, {n['FAIL']} fail, {n['ERROR']} error, {n['MISSING']} missing "
        f"({elapsed():.0f} s since start)"
    )
    log(
        "(value err, grad err: relative to dense float32, or to float64 for bfloat16, where 'dense err' is "
        "dense bfloat16's own gradient error)"
    )
    return results


# --------------------------------------------------------------------------------------------
# 2. The time and memory table
# --------------------------------------------------------------------------------------------


class Row:
    def __init__(self, name: str, kind: str, spec=None, sizes: set | None = None, min_left_s: float = 1.0):
        self.name, self.kind, self.spec, self.sizes = name, kind, spec, sizes
        self.min_left_s = min_left_s  # budget a first call (nothing to predict from) needs
        self.dead: str | None = None  # why it stopped
        self.last: tuple | None = None  # (B, seconds per call)
        self.prev: tuple | None = None  # the size before it
        self.warmed = False

    def build(self, x, y, product_max_bytes):
        if self.kind == "anchor":
            return bc.anchor_fn(self.name, x, y, product_max_bytes)
        return bc.loss_fn(self.spec[0], self.spec[1], x, y)


def _reps(t: float, dev: torch.device) -> int:
    if t > 2.0:
        return 1
    if t > 0.3:
        return 3
    return 10 if t > 0.01 or dev.type == "cpu" else 30


def run_table(
    dev, sizes, D, dtype, deadline, per_call_cap, impls, compile_sizes, with_pml, product_max_bytes: int, on_size=None
) -> list[dict]:
    """Two passes over the sizes, so that the budget goes to the target rows first: (1) the product and
    the triton rows, (2) chunked, dense and the anchors. Ratios use the product of pass 1.
    ``on_size(records)``: called after each size (the script saves what it has: a run cut off
    keeps it)."""
    nce_sizes = {B for B in sizes if B <= INFONCE_MAX_B}
    first = [Row("product", "anchor")]
    first += [Row(f"{loss}/triton", "loss", (loss, "triton")) for loss in TABLE_LOSSES if "triton" in impls]
    if "triton" in impls:
        first.append(Row("InfoNCE/triton", "loss", ("InfoNCE", "triton"), sizes=nce_sizes))
    second = [
        Row(f"{loss}/{impl}", "loss", (loss, impl))
        for impl in ("chunked", "dense")
        if impl in impls
        for loss in TABLE_LOSSES
    ]
    second.append(Row("InfoNCE/chunked", "loss", ("InfoNCE", "chunked"), sizes=nce_sizes))
    second += [Row("dense-formula-MH", "anchor"), Row("dense-formula-SH", "anchor")]
    second.append(Row("dense-CLIP", "anchor", sizes=nce_sizes))
    if dev.type == "cuda" and importlib.util.find_spec("inf_cl") is not None:
        second.append(Row("Inf-CL", "anchor", sizes=nce_sizes))
    if with_pml:
        second.append(Row("PML-BatchHard-Triplet", "anchor"))
    if compile_sizes:
        # its first call compiles (tens of seconds): started only with a minute of budget left
        second.append(Row("compiled-dense-MH", "anchor", sizes=set(compile_sizes), min_left_s=60.0))
    dname = str(dtype).replace("torch.", "")
    log(f"\n== time and memory: forward+backward, D={D}, {dname}, budget until {deadline - T_START:.0f} s ==")
    log(f"{'B':>9} {'row':<24} {'ms':>11} {'×product':>9} {'peak MiB':>10} {'extra MiB':>10}  note")
    records: list[dict] = []
    prod_ms: dict[int, float] = {}
    for rows in (first, second):
        for B in sizes:
            if all(r.dead or (r.sizes is not None and B not in r.sizes) for r in rows):
                continue
            try:
                x, y = bc.make_inputs(B, D, dtype, dev)
            except bc.OOM_ERRORS:
                log(f"{B:>9} inputs do not fit: stop")
                bc.free_memory(dev)
                break
            except Exception as e:  # noqa: BLE001  a broken CUDA context: keep what was measured
                log(f"{B:>9} inputs: {type(e).__name__}: {str(e)[:200]}; stop")
                return records
            for row in rows:
                rec = measure_row(row, B, x, y, dev, deadline, per_call_cap, product_max_bytes, prod_ms)
                if rec is not None:
                    records.append({**rec, "D": D, "dtype": dname})
            del x, y
            bc.free_memory(dev)
            if on_size is not None:
                on_size(records)
    return records


def _growth(row: Row) -> float:
    """The exponent of a row's time in B, from its last two sizes, between 2 (the product's) and 3:
    the SH/ℓp backward's chunks shrink as 1/M, so its accumulation grows faster than B² at the
    largest sizes."""
    if row.prev is None or row.prev[0] == row.last[0] or row.prev[1] <= 0 or row.last[1] <= 0:
        return 2.0
    k = math.log(row.last[1] / row.prev[1]) / math.log(row.last[0] / row.prev[0])
    return min(3.0, max(2.0, k))


def measure_row(row: Row, B: int, x, y, dev, deadline, per_call_cap, product_max_bytes, prod_ms) -> dict | None:
    rec = {"B": B, "row": row.name}
    if row.dead or (row.sizes is not None and B not in row.sizes):
        return None
    left = deadline - time.time()
    t_pred = row.last[1] * (B / row.last[0]) ** _growth(row) if row.last else None
    why = None
    if t_pred is not None:
        cost = t_pred * (1 + _reps(t_pred, dev)) + (0 if row.warmed else t_pred)
        if t_pred > per_call_cap:
            why = f"predicted {t_pred:.1f} s per call > cap {per_call_cap:.0f} s"
        elif cost > left:
            why = f"predicted {cost:.0f} s > {max(left, 0):.0f} s of budget left"
    elif left < row.min_left_s:
        why = f"{max(left, 0):.0f} s of budget left, its first call needs {row.min_left_s:.0f} s"
    if why:
        row.dead = why
        log(f"{B:>9} {row.name:<24} {'skip':>11} {'':>9} {'':>10} {'':>10}  {why}; stops here")
        return {**rec, "status": "skipped", "note": why}
    note = ""
    grad_mib = 2 * B * x.shape[1] * x.element_size() / 2**20
    try:
        if row.name == "product":
            run, label = bc.product_fn(x, y, product_max_bytes, buffer_in_call=True)
            note = "" if label == "product" else label
        else:
            run = row.build(x, y, product_max_bytes)

        def step():
            run()
            bc.sync(dev)

        if not row.warmed or (t_pred is not None and t_pred < 1.0):
            step()  # compilation, autotuning, cuBLAS workspaces
            row.warmed = True
        t0 = time.perf_counter()
        peak = bc.peak_memory_mib(step, dev, clear=(x, y))
        t_first = time.perf_counter() - t0
        med, ts = bc.median_time_s(step, dev, _reps(t_first, dev))
    except bc.OOM_ERRORS as e:
        msg = f"out of memory ({str(e).splitlines()[0][:80] if str(e) else ''})"
        del e
        row.dead = "out of memory"
        x.grad = y.grad = None
        bc.free_memory(dev)
        log(f"{B:>9} {row.name:<24} {'OOM':>11} {'':>9} {'':>10} {'':>10}  stops here")
        return {**rec, "status": "oom", "note": msg}
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        if os.environ.get("VSE_GPU_CHECK_TRACEBACK"):
            traceback.print_exc()
        del e
        row.dead = msg
        x.grad = y.grad = None
        bc.free_memory(dev)
        log(f"{B:>9} {row.name:<24} {'ERROR':>11} {'':>9} {'':>10} {'':>10}  {msg}")
        return {**rec, "status": "error", "note": msg}
    x.grad = y.grad = None
    row.prev, row.last = row.last, (B, med)
    ms = med * 1e3
    if row.name == "product":
        prod_ms[B] = ms
    extra = peak - (0.0 if row.name == "product" else grad_mib)
    ratio = ms / prod_ms[B] if prod_ms.get(B) else float("nan")
    log(f"{B:>9} {row.name:<24} {ms:>11.3f} {ratio:>9.2f} {peak:>10.1f} {extra:>10.1f}  {note}")
    return {
        **rec,
        "status": "ok",
        "ms": ms,
        "times_ms": [t * 1e3 for t in ts],
        "x_product": ratio,
        "peak_mib": peak,
        "extra_mib": extra,
        "note": note,
    }


def pivot_markdown(records: list[dict], sizes: list[int]) -> str:
    names: list[str] = []
    for r in records:
        if r["row"] not in names:
            names.append(r["row"])
    by = {(r["row"], r["B"]): r for r in records}
    cols = [B for B in sizes if any(r["B"] == B for r in records)]

    def cell(r, fmt):
        if r is None:
            return "—"
        if r["status"] == "oom":
            return "OOM"
        if r["status"] != "ok":
            return "skip" if r["status"] == "skipped" else "error"
        return fmt(r)

    def ms_cell(r):
        s = f"{r['ms']:.3f}" if r["ms"] < 1 else f"{r['ms']:.2f}" if r["ms"] < 100 else f"{r['ms']:,.0f}"
        return s if r["row"] == "product" else f"{s} ({r['x_product']:.2f}×)"

    def mem_cell(r):
        m = r["extra_mib"]
        return f"{m / 1024:.2f} GiB" if abs(m) >= 1024 else f"{m:.1f}"

    out = [
        "Forward+backward, median ms (× the product in the same run; product: forward alone):",
        "",
        "| row | " + " | ".join(f"B={B:,}" for B in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    out += [f"| {n} | " + " | ".join(cell(by.get((n, B)), ms_cell) for B in cols) + " |" for n in names]
    out += [
        "",
        "Extra memory of one call beyond the inputs and their gradients, MiB (product: its output or tile buffer):",
        "",
        "| row | " + " | ".join(f"B={B:,}" for B in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    out += [f"| {n} | " + " | ".join(cell(by.get((n, B)), mem_cell) for B in cols) + " |" for n in names]
    out += [
        "",
        "OOM: out of memory (the row stops); skip: predicted over the per-call cap or the budget "
        "(the row stops); —: not run at that size.",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# 4. Tile sweep
# --------------------------------------------------------------------------------------------

# Alternatives to the default tiles, each compiling for sm_90 (triton 3.6, as specialized at run
# time) without spills (benchmarks/compile_kernels.py with the tiles as a variant's fifth element):
# the sweep times them so that one GPU session can pick.
# 4 warps, 3 stages: two programs fit one SM (96 KiB shared memory, 128 threads x 255 registers
# each), so that one program's epilogue (the masked row/column argmax) overlaps the other's products.
SWEEP_NEGMAX = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=4),
]
SWEEP_HINGE = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4),
]
# lse_pairs (InfoNCE): the forward with both directions' statistics, and the backward's weights
SWEEP_LSE_FWD = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
]
SWEEP_LSE_WEIGHTS = [  # BLOCK_M is the chunks' multiple: the dtype's default
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4),
]


def tiles_label(cfg: dict | None) -> str:
    if cfg is None:
        return "default"
    return "{BLOCK_M}x{BLOCK_N}x{BLOCK_K} w{num_warps} s{num_stages}".format(**cfg)


def run_tile_sweep(dev: torch.device, B: int, D: int, dtype: torch.dtype, deadline: float) -> list[dict]:
    """The fused kernels alone at one size, default tiles first, each as a ratio to the product of
    the same shape: the hardest-negative kernel (B×B), the per-direction ℓp forward (p=2, B×B),
    the paired batch's one-pass forward of both directions (default tiles), one side of the paired
    MH's backward, the SH/ℓp backward's weight kernel (one chunk of rows × B, cuBLAS excluded) —
    the hinge kernels in their scaled variants, the cosine folded in as the losses run them — and
    InfoNCE's lse_pairs: the forward (both directions), the backward's weights (the same rows × B),
    and its whole backward (weights and cuBLAS products) in one pass (∂y accumulated in float32)
    and in two (∂y from a second pass over column chunks, what B=65,536 takes by default; also with
    chunks of weights twice the default)."""
    from vse_losses.ops import triton_hinge_norm as hn
    from vse_losses.ops.triton_hinge_norm_pairs import _pairs_forward
    from vse_losses.ops.triton_negative_max import negative_max_triton

    x, y = bc.make_inputs(B, D, dtype, dev)
    x, y = x.detach(), y.detach()
    lab = torch.arange(B, device=dev)
    none = torch.full((B,), -1, device=dev, dtype=torch.long)
    t = torch.full((B,), 0.05, device=dev)
    T = torch.ones(B, device=dev)
    g = torch.ones(B, device=dev)
    R = hn._chunk_rows(B, B, 128)
    w_dtype = dtype if dev.type == "cuda" else torch.float32
    jobs = [("product B×B", None, lambda cfg: x @ y.t())]
    # the hardest-negative search as MaxViolationLoss runs it: cosine folded in as row/column scales
    scales = (1.0 / x.float().norm(dim=1), 1.0 / y.float().norm(dim=1))
    jobs += [
        ("negative_max cosine", c, lambda cfg: negative_max_triton(x, y, lab, lab, False, scales=scales, _config=cfg))
        for c in [None] + SWEEP_NEGMAX
    ]
    jobs += [
        ("hinge forward p=2", c, lambda cfg: hn._forward(x, y, t, lab, lab, none, 2.0, scales=scales, config=cfg))
        for c in [None] + SWEEP_HINGE
    ]
    jobs += [("pairs forward p=2", None, lambda cfg: _pairs_forward(x, y, t, lab, lab, False, 2.0, scales=scales))]
    # one side of the paired MH backward (memory-bound: compare with reading x and y once)
    from vse_losses.ops.triton_max_violation_backward import mh_side_triton

    gen = torch.Generator(device=dev).manual_seed(0)
    hard = torch.randint(0, B, (B,), device=dev, generator=gen)
    wv = torch.rand(B, device=dev, generator=gen)
    jobs += [
        (
            "MH backward, one side",
            None,
            lambda cfg: mh_side_triton(
                x, y, scales[0], scales[1], -2 * wv, wv, wv, hard, wv, wv, hard.flip(0), wv, True
            ),
        )
    ]
    jobs += [(f"product {R}×B", None, lambda cfg: x[:R] @ y.t())]
    jobs += [
        (
            f"weights {R}×B p=2",
            c,
            lambda cfg: hn._weights(
                x, y, 0, R, (t, T, g), (t, T, g), lab, lab, None, None, 2.0, w_dtype, scales=scales, config=cfg
            ),
        )
        for c in [None] + SWEEP_HINGE
    ]
    jobs += _lse_sweep_jobs(x, y, lab, R)
    out, base = [], {}
    for name, cfg, fn in jobs:
        if time.time() > deadline:
            log(f"tile sweep: out of time before {name}")
            break
        try:
            fn(cfg)  # compile
            bc.sync(dev)
            sec, _ = bc.median_time_s(lambda fn=fn, cfg=cfg: fn(cfg), dev, 5 if dev.type == "cuda" else 1)
        except Exception as e:  # noqa: BLE001
            log(f"tile sweep: {name} {cfg}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        ms = sec * 1e3
        if name.startswith("product"):
            base[name.split(" ")[1]] = ms
        shape = f"{R}×B" if "weights" in name else "B×B"
        ratio = ms / base[shape] if base.get(shape) else float("nan")
        tiles = tiles_label(cfg)
        out.append(dict(kernel=name, tiles=tiles, ms=ms, x_product=ratio))
        log(f"  {name:22s} {tiles:24s} {ms:9.3f} ms  {ratio:6.2f}× product")
    return out


def _lse_sweep_jobs(x, y, lab, R: int) -> list:
    """The sweep's jobs of InfoNCE's lse_pairs kernels (paired batch, τ = CLIP's, the cosine folded
    in as the loss runs them: the scaled variants)."""
    from vse_losses.ops import triton_lse_pairs as lp
    from vse_losses.ops.tiling import cosine_scale_pair

    z = lp.LOG2E / bc.CLIP_TEMPERATURE
    scales = cosine_scale_pair(x, y, True, torch.float32)
    row, col = lp._statistics(x, y, lab, lab, False, z, True, scales=scales)
    g = torch.full_like(row, 1.0 / row.shape[0])
    terms = ((row, g), (col, g))
    w_dtype = x.dtype if x.is_cuda else torch.float32  # as the backward's Matmul stores them

    def weights(cfg):
        chunks = lp._weight_chunks(
            x[:R],
            y,
            lab,
            lab,
            False,
            z,
            (row[:R], g[:R]),
            terms[1],
            w_dtype,
            scales=(scales[0][:R], scales[1]),
            config=cfg,
        )
        for _ in chunks:
            pass

    def backward(acc_bytes, chunk=lp.W_CHUNK_ELEMENTS):
        def run(cfg):
            saved = lp.ACC_BYTES, lp.W_CHUNK_ELEMENTS
            lp.ACC_BYTES, lp.W_CHUNK_ELEMENTS = acc_bytes, chunk
            try:
                lp._products(x, y, lab, lab, False, z, *terms, True, True, False, scales)
            finally:
                lp.ACC_BYTES, lp.W_CHUNK_ELEMENTS = saved

        return run

    jobs = [
        ("lse forward, both", c, lambda cfg: lp._statistics(x, y, lab, lab, False, z, True, scales=scales, config=cfg))
        for c in [None] + SWEEP_LSE_FWD
    ]
    jobs += [(f"lse weights {R}×B", c, weights) for c in [None] + SWEEP_LSE_WEIGHTS]
    jobs += [("lse backward, one pass", None, backward(2**62)), ("lse backward, two passes", None, backward(0))]
    jobs += [("lse backward, two passes, 2× chunks", None, backward(0, 2 * lp.W_CHUNK_ELEMENTS))]
    return jobs


def retime_mh(dev: torch.device, B: int, D: int, dtype: torch.dtype, sweep: list[dict], deadline: float) -> list[dict]:
    """MaxViolationLoss(impl="triton") forward+backward at B with the default hardest-negative tiles
    and with the sweep's fastest alternative (when it beat the default by over 3 %), side by side
    with the product, so that a session can see what the alternative does to the target."""
    from vse_losses.ops import triton_negative_max as nm

    runs = [r for r in sweep if r["kernel"] == "negative_max cosine"]
    default = next((r for r in runs if r["tiles"] == "default"), None)
    best = min((r for r in runs if r["tiles"] != "default"), key=lambda r: r["ms"], default=None)
    if default is None or best is None or best["ms"] > 0.97 * default["ms"] or time.time() > deadline:
        return []
    cfg = next(c for c in SWEEP_NEGMAX if tiles_label(c) == best["tiles"])
    x, y = bc.make_inputs(B, D, dtype, dev)
    product, _ = bc.product_fn(x, y)
    original = nm._default_config
    out = []
    for tiles, config_fn in (("default", original), (best["tiles"], lambda *a, **k: dict(cfg))):
        nm._default_config = config_fn
        try:
            run = bc.loss_fn("MH", "triton", x, y)
            run()  # compile
            bc.sync(dev)
            ms = bc.median_time_s(run, dev, 5)[0] * 1e3
            p_ms = bc.median_time_s(product, dev, 5)[0] * 1e3
        finally:
            nm._default_config = original
        out.append(dict(row="MH/triton", B=B, tiles=tiles, ms=ms, x_product=ms / p_ms))
        log(f"  MH/triton B={B:,} hardest-negative tiles {tiles:24s} {ms:9.3f} ms  {ms / p_ms:6.2f}× product")
    return out


# --------------------------------------------------------------------------------------------
# 3. Targets
# --------------------------------------------------------------------------------------------

TARGETS = [
    # (row, B, max × product, max extra MiB, max ms)
    ("MH/triton", 65536, 1.25, 256, None),
    ("MH/triton", 1048576, 1.25, 1024, None),
    ("SH/triton", 65536, 4.0, None, None),
    ("Lp2/triton", 65536, 4.0, None, None),
    ("MH/triton", 128, None, None, 0.15),
    ("InfoNCE/triton", 65536, 2.5, 256, None),
]


def target_lines(records: list[dict]) -> list[str]:
    by = {(r["row"], r["B"]): r for r in records}
    lines = []
    for row, B, max_ratio, max_extra, max_ms in TARGETS:
        r = by.get((row, B))
        want = ", ".join(
            s
            for s in (
                f"≤ {max_ratio}× product" if max_ratio else "",
                f"≤ {max_extra} MiB extra" if max_extra else "",
                f"≤ {max_ms} ms" if max_ms else "",
            )
            if s
        )
        if r is None or r["status"] != "ok":
            lines.append(f"- {row} B={B:,} ({want}): not measured ({r['note'] if r else 'not run'})")
            continue
        ok = (
            (max_ratio is None or r["x_product"] <= max_ratio)
            and (max_extra is None or r["extra_mib"] <= max_extra)
            and (max_ms is None or r["ms"] <= max_ms)
        )
        lines.append(
            f"- {row} B={B:,} ({want}): {r['ms']:.3f} ms, {r['x_product']:.2f}× product, "
            f"{r['extra_mib']:.0f} MiB extra — {'PASS' if ok else 'MISS'}"
        )
    return lines


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="run on the CPU at tiny sizes (tests this script)")
    ap.add_argument("--sizes", help="comma-separated batch sizes of the table")
    ap.add_argument("--D", type=int, help="embedding size of the table (default 1024; smoke 64)")
    ap.add_argument("--dtype", default=None, help="dtype of the table (default bfloat16; smoke float32)")
    ap.add_argument("--budget-s", type=float, help="total seconds for the whole script (default 250; smoke 30)")
    ap.add_argument("--per-call-cap-s", type=float, default=None, help="skip a size whose predicted call exceeds this")
    ap.add_argument(
        "--compile-sizes",
        default=None,
        help="sizes for the torch.compile anchor (default 16384,65536; smoke: none); 'none' to leave out",
    )
    ap.add_argument(
        "--product-max-mib",
        type=float,
        default=None,
        help="largest B×B product computed at once; tiled above (default: a quarter of the GPU; smoke 1)",
    )
    ap.add_argument("--no-check", action="store_true", help="skip the checks against dense")
    ap.add_argument("--no-table", action="store_true", help="skip the time/memory table")
    ap.add_argument("--no-sweep", action="store_true", help="skip the timing of alternative Triton tiles")
    ap.add_argument("--md", help="also write the table as markdown to this file")
    ap.add_argument("--json", help="write every record to this JSON file")
    args = ap.parse_args(argv)

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        log("no CUDA device: run with --cpu-smoke to exercise this script on the CPU")
        return 2
    dev = torch.device("cpu" if smoke else "cuda")
    if smoke:
        # the smoke run tests this script, not the CPU: one thread keeps it quick on a shared machine
        torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (SMOKE_SIZES if smoke else GPU_SIZES)
    D = args.D or (64 if smoke else 1024)
    dtype = getattr(torch, args.dtype or ("float32" if smoke else "bfloat16"))
    budget = args.budget_s or (30.0 if smoke else 250.0)
    cap = args.per_call_cap_s or (5.0 if smoke else 30.0)
    cs = args.compile_sizes or ("none" if smoke else "16384,65536")
    compile_sizes = [] if cs == "none" else [int(s) for s in cs.split(",")]

    tri_ok, tri_why = bc.triton_impl_available()
    if smoke and os.environ.get("TRITON_INTERPRET") == "1":
        from vse_losses.ops import triton_available

        tri_ok, tri_why = triton_available(), "triton not importable"
    pml_ok, pml_why = bc.pml_available()
    try:
        import triton

        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = "not installed"
    log(f"# gpu_check {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  device: {bc.device_name(dev)}")
    log(
        f"# torch {torch.__version__}, triton {tv}, vse_losses {bc.vse_losses.__version__}, "
        f"triton impl: {'yes' if tri_ok else 'no (' + tri_why + ')'}, "
        f"PML anchor: {'yes' if pml_ok else 'no (' + pml_why + ')'}"
    )
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the default; fp32 references stay fp32
    impls = ["chunked"] + (["triton"] if tri_ok else [])

    result = {"device": bc.device_name(dev), "torch": torch.__version__, "triton": tv}

    def save(**parts) -> None:
        """Every result so far into --json, rewritten atomically after each stage (and each size of
        the table): a run cut off by a timeout or a crash keeps what it measured."""
        result.update(parts)
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1, default=str)
            os.replace(tmp, args.json)

    checks = [] if args.no_check else run_checks(dev, smoke, impls)
    save(checks=checks)
    # whether this torch took the fp32-output products of half inputs (mm, and the in-place addmm
    # that accumulates the SH/ℓp keys' gradient) or fell back to widening / a temporary per chunk;
    # on the CPU neither is tried
    from vse_losses.ops.tiling import Matmul

    native = {"mm_out_dtype": Matmul._native_ok, "addmm_out_dtype_in_place": Matmul._native_add_ok}
    log(f"# fp32-output products of half inputs (tried on CUDA only): {native}")
    save(native_products=native)
    records: list[dict] = []
    if not args.no_table:
        table_impls = ["dense", "chunked"] + (["triton"] if tri_ok and dev.type == "cuda" else [])
        if args.product_max_mib:
            pmax = int(args.product_max_mib * 2**20)
        else:
            pmax = torch.cuda.get_device_properties(dev).total_memory // 4 if dev.type == "cuda" else 2**20
        records = run_table(
            dev,
            sizes,
            D,
            dtype,
            T_START + budget,
            cap,
            table_impls,
            compile_sizes,
            pml_ok,
            pmax,
            on_size=lambda r: save(table=r),
        )
        save(table=records)
        md = pivot_markdown(records, sizes)
        log("\n" + md)
        tl = target_lines(records) if dev.type == "cuda" else []
        if tl:
            log("\nTargets (H100, D=1024, bf16):")
            for line in tl:
                log(line)
        if args.md:
            head = (
                f"Device: {bc.device_name(dev)}; torch {torch.__version__}, triton {tv}; "
                f"{time.strftime('%Y-%m-%d')}; D={D}, {str(dtype).replace('torch.', '')}; "
                f"`python benchmarks/gpu_check.py{' --cpu-smoke' if smoke else ''}`.\n\n"
            )
            body = md + ("\n\nTargets:\n\n" + "\n".join(tl) if tl else "") + "\n"
            with open(args.md, "w") as f:
                f.write(head + body)
            log(f"wrote {args.md}")
    sweep: list[dict] = []
    retimed: list[dict] = []
    interpreted = smoke and os.environ.get("TRITON_INTERPRET") == "1"
    if not args.no_sweep and tri_ok and (dev.type == "cuda" or interpreted):
        sweep_B = 64 if smoke else 65536
        log(f"\nTile sweep (B={sweep_B:,}, D={D}, {str(dtype).replace('torch.', '')}; kernels alone):")
        try:  # a kernel that fails here failed the checks already: keep the rest of the results
            sweep = run_tile_sweep(dev, sweep_B, D, dtype, T_START + budget + (30 if smoke else 60))
            retimed = retime_mh(dev, sweep_B, D, dtype, sweep, T_START + budget + (40 if smoke else 80))
        except Exception as e:  # noqa: BLE001
            log(f"tile sweep: {type(e).__name__}: {str(e)[:200]}; stopped")
        save(tile_sweep=sweep, mh_retimed=retimed)
        if args.md and sweep:
            rows = "\n".join(f"| {r['kernel']} | {r['tiles']} | {r['ms']:.3f} | {r['x_product']:.2f}× |" for r in sweep)
            rows += "".join(
                f"\n| MaxViolationLoss fwd+bwd, hardest-negative tiles | {r['tiles']} | {r['ms']:.3f} | "
                f"{r['x_product']:.2f}× |"
                for r in retimed
            )
            with open(args.md, "a") as f:
                f.write(
                    f"\nTile sweep, B={sweep_B:,}, the kernels alone (ratio to the product of the same shape):\n\n"
                    "| kernel | tiles | ms | × product |\n|---|---|---:|---:|\n" + rows + "\n"
                )
    bad = [c for c in checks if c["status"] in ("FAIL", "ERROR")]
    log(f"\ndone in {elapsed():.0f} s; checks {'FAILED: ' + str(len(bad)) if bad else 'ok'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
