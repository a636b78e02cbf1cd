"""A self-check of this installation: every loss × impl against float64, then a small timing table.

    python -m vse_losses.check                 # about 15 s on 2 CPU cores
    python -m vse_losses.check --quick         # correctness only
    python -m vse_losses.check --json out.json # also save every result
    TRITON_INTERPRET=1 python -m vse_losses.check --quick --device cpu   # triton in its CPU interpreter

1. Correctness. Every loss × every impl that runs here (``dense`` and ``chunked`` everywhere;
   ``triton`` where :func:`vse_losses.ops.triton_runs` says it can: CUDA, or triton's CPU
   interpreter in float32) on small random batches: the paired call ``loss(x, y)`` and the labelled
   call ``loss(x, labels, ref_emb=y, ref_labels=...)`` with repeated labels on both sides and B ≠ M,
   each at a size of one tile and of several (triton in the interpreter: the small sizes only).
   Forward and backward, the loss and both input gradients, against ``impl="dense"`` in float64 on
   the CPU on the same rounded inputs, by the project's tolerance rule (docs/design.md):

       max|impl − ref| ≤ max|torch − ref| + atol + rtol·max|ref|     (over each tensor)

   "torch" is the loss written in plain torch (cosine, score matrix, masks, each row's norm) on the
   same device, its inputs and their normalisation in the checked dtype and its scores accumulated
   in float32 or wider (see :func:`plain_loss`): what the dtype itself costs. atol and rtol are
   stated in ``TOLERANCE`` and printed. CPU: float32 and float64; GPU: float32, bfloat16 and
   float16 (``--dtypes`` for others). The reference itself is checked against the plain formula in
   float64 first (the ``ref`` lines). One line per check: the worst error of the value and of the
   gradients, each beside its bound, and PASS/FAIL.
2. Timing (not with ``--quick``). Forward+backward of each loss with its default ``impl="auto"``
   beside the dense formula a user would write (the original VSE++ criterion: cosine, score matrix,
   diagonal, hinge matrices, eye mask, then the max or the sum) and the bare product ``x @ y.T``
   (forward), D = 1024, at B = 128 and 1024 (GPU: also 4096; float32 on the CPU, bfloat16 on a
   GPU). The rows' calls are interleaved round by round; the table gives each row's median time and
   the medians of its per-round ratios to the product and to the two formulas.

Exit status: 0 when every check passes, 1 when any check fails or raises (the failing checks are
listed at the end), 2 for bad arguments (argparse's one-line errors).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import vse_losses
from vse_losses.ops import resolve_impl, triton_available, triton_runs

IMPLS = ("dense", "chunked", "triton")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
MARGIN = 0.2

# the tolerance rule's stated tolerance beyond torch's own error in the same dtype: (atol, rtol).
# float32: the float32 accumulation the kernels promise; a half dtype: one rounding of the result
# (its gradients are stored in it), i.e. its epsilon; float64: rounding only.
TOLERANCE = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-6, 1e-5),
    torch.bfloat16: (1e-6, torch.finfo(torch.bfloat16).eps),
    torch.float16: (1e-6, torch.finfo(torch.float16).eps),
}


@dataclass(frozen=True)
class LossSpec:
    """A loss as checked here: its class, constructor arguments, and the plain formula's norm."""

    cls: str
    kwargs: dict
    kind: str  # sum | max | topk | lp | mix | lse | infonce
    margin: float = MARGIN

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.cls}({args})"

    def make(self, impl: str):
        return getattr(vse_losses, self.cls)(margin=self.margin, impl=impl, **self.kwargs)


# the defaults of TopK (k=1) and Mix (mix=0) are MH and SH themselves: non-trivial points instead
LOSSES = [
    LossSpec("SumHingeLoss", {}, "sum"),
    LossSpec("MaxViolationLoss", {}, "max"),
    LossSpec("TopKViolationLoss", {"k": 3}, "topk"),
    LossSpec("LpViolationLoss", {"p": 2.0}, "lp"),
    LossSpec("MixedViolationLoss", {"mix": 0.5}, "mix"),
    LossSpec("LogSumExpViolationLoss", {"temperature": 0.05}, "lse"),
    LossSpec("InfoNCELoss", {"temperature": 0.07}, "infonce", margin=0.0),
]


@dataclass
class Case:
    """Inputs of one check, float64 on the CPU; labels None: the paired call."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor | None = None
    ref_labels: torch.Tensor | None = None
    large: bool = False  # several tiles: left out for triton in its (slow) CPU interpreter


def make_cases(seed: int = 0, D: int = 40) -> list[Case]:
    """A paired batch and a labelled one (B ≠ M, labels repeated on both sides), each at a size of
    one tile (B = 37 ≤ 128: the paired MH's one-launch triton kernel) and of several tiles. D = 40
    is not a multiple of the kernels' blocks."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def labelled(name, B, M, n_labels, large):
        return Case(
            name,
            randn(B, D),
            randn(M, D),
            torch.randint(0, n_labels, (B,), generator=g),
            torch.randint(0, n_labels, (M,), generator=g),
            large,
        )

    return [
        Case("paired B=37", randn(37, D), randn(37, D)),
        labelled("labels B=29 M=41", 29, 41, 8, False),
        Case("paired B=300", randn(300, D), randn(300, D), large=True),
        labelled("labels B=257 M=383", 257, 383, 60, True),
    ]


# --------------------------------------------------------------------------------------------
# The plain torch formula: the loss as a user would write it, in whatever dtype it is given
# --------------------------------------------------------------------------------------------


def plain_loss(spec: LossSpec, x, y, labels=None, ref_labels=None) -> torch.Tensor:
    """The mean of the loss's terms (one per positive pair and direction, docs/design.md) from the
    B×M cosine score matrix: torch's own computation of the loss in the inputs' dtype. The rows are
    normalised in that dtype and the scores accumulated in float32 (or wider), as the library and
    torch's half-precision products do: the rounding of the normalised rows then reorders the same
    near-tied negatives here as there (a reordering moves a term's whole gradient to another row,
    and two computations that reorder different rows cannot be told apart by their errors' sizes)."""
    wide = torch.promote_types(x.dtype, torch.float32)
    S = F.normalize(x, dim=1).to(wide) @ F.normalize(y, dim=1).to(wide).t()
    if labels is None:
        labels = ref_labels = torch.arange(x.shape[0], device=x.device)
    ref_labels = labels if ref_labels is None else ref_labels
    pos = labels[:, None] == ref_labels[None, :]
    a, p = pos.nonzero(as_tuple=True)
    s_ap = S[a, p][:, None]
    # i2t: the columns n of row a with another label; t2i: the rows n of column p with another label
    terms = torch.cat(
        [
            _plain_norm(spec, spec.margin - s_ap + S[a], ~pos[a]),
            _plain_norm(spec, spec.margin - s_ap + S[:, p].t(), ~pos[:, p].t()),
        ]
    )
    return terms.to(torch.promote_types(terms.dtype, torch.float32)).mean()


def _plain_norm(spec: LossSpec, v: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    kw = spec.kwargs
    if spec.kind in ("lse", "infonce"):  # log(1 + Σ exp(v/τ)): the positive's 0 joins the negatives
        t = kw["temperature"]
        z = torch.cat([torch.zeros_like(v[:, :1]), (v / t).masked_fill(~negative, float("-inf"))], 1)
        L = torch.logsumexp(z, 1)
        return L * t if spec.kind == "lse" else L
    h = v.clamp(min=0).masked_fill(~negative, 0)
    if spec.kind == "sum":
        return h.sum(1)
    if spec.kind == "max":
        return h.amax(1)
    if spec.kind == "topk":
        return h.topk(min(kw["k"], h.shape[1]), dim=1).values.sum(1)
    if spec.kind == "lp":
        m = h.amax(1, keepdim=True).clamp(min=torch.finfo(h.dtype).tiny)
        return (h / m).pow(kw["p"]).sum(1).pow(1 / kw["p"]) * m[:, 0]
    if spec.kind == "mix":
        return (1 - kw["mix"]) * h.sum(1) + kw["mix"] * h.amax(1)
    raise ValueError(spec.kind)


# --------------------------------------------------------------------------------------------
# 1. Correctness
# --------------------------------------------------------------------------------------------


RULE = (
    "rule: max|impl − ref| ≤ max|torch − ref| + atol + rtol·max|ref|, for the loss and for each input gradient",
    "  ref: impl='dense' in float64 on the CPU, on the same rounded inputs; 'ref' lines check it against the "
    "plain formula in float64",
    "  torch: the loss in plain torch on the same device, the inputs and their normalisation in the checked dtype, "
    "scores and norms accumulated in float32 or wider (so that both pick the same hardest negatives where the "
    "dtype's rounding reorders near-tied ones)",
)


@dataclass
class Check:
    loss: str
    impl: str
    dtype: str
    case: str
    status: str = "PASS"
    value_err: float = 0.0
    value_allowed: float = 0.0
    grad_err: float = 0.0
    grad_allowed: float = 0.0
    failed: list = field(default_factory=list)  # which of value, grad x, grad y
    error: str = ""

    @property
    def name(self) -> str:
        return f"{self.loss} impl={self.impl} {self.dtype} {self.case}"


def value_and_grads(fn: Callable, x0: torch.Tensor, y0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(loss, ∂x, ∂y) of ``fn(x, y)`` on copies of x0 and y0, as float64 on the CPU."""
    x, y = x0.detach().clone().requires_grad_(True), y0.detach().clone().requires_grad_(True)
    gx, gy = torch.autograd.grad(loss := fn(x, y), (x, y))
    return tuple(t.detach().double().cpu() for t in (loss, gx, gy))


def library_call(spec: LossSpec, impl: str, labels, ref_labels) -> Callable:
    """The loss class with ``impl``: the paired call without labels, PML's labelled call with them."""
    loss_fn = spec.make(impl)
    if labels is None:
        return loss_fn
    return lambda x, y: loss_fn(x, labels, ref_emb=y, ref_labels=ref_labels)


def plain_call(spec: LossSpec, labels, ref_labels) -> Callable:
    return lambda x, y: plain_loss(spec, x, y, labels, ref_labels)


def judge(check: Check, got, exact, base, atol: float, rtol: float) -> Check:
    """The tolerance rule on (value, ∂x, ∂y); ``base`` None: no torch error to allow (exact only)."""
    worst_ratio = -1.0
    for i, what in enumerate(("value", "grad x", "grad y")):
        err = (got[i] - exact[i]).abs().max().item()
        base_err = 0.0 if base is None else (base[i] - exact[i]).abs().max().item()
        allowed = base_err + atol + rtol * exact[i].abs().max().item()
        if not err <= allowed:  # NaN fails
            check.failed.append(what)
        if i == 0:
            check.value_err, check.value_allowed = err, allowed
        elif (err / allowed if allowed > 0 else math.inf) > worst_ratio or math.isnan(err):
            worst_ratio = err / allowed if allowed > 0 else math.inf
            check.grad_err, check.grad_allowed = err, allowed
    check.status = "FAIL" if check.failed else "PASS"
    return check


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_line(c: Check) -> str:
    head = f"{c.loss:<44} {c.impl:<8} {c.dtype:<9} {c.case:<19}"
    if c.status == "ERROR":
        return f"{head} ERROR {c.error}"
    tail = f" ({', '.join(c.failed)})" if c.failed else ""
    return (
        f"{head} value {c.value_err:8.2e} ≤ {c.value_allowed:8.2e}   grads {c.grad_err:8.2e} ≤ "
        f"{c.grad_allowed:8.2e}   {c.status}{tail}"
    )


def available_impls(device: torch.device, dtype: torch.dtype) -> list[str]:
    """dense and chunked; triton where :func:`~vse_losses.ops.triton_runs` says it runs (off CUDA: in
    triton's CPU interpreter, float32 only, as its dot product has no half types there)."""
    probe = torch.empty(1, 1, device=device, dtype=dtype)
    triton = triton_runs(probe) and (device.type == "cuda" or dtype == torch.float32)
    return ["dense", "chunked"] + (["triton"] if triton else [])


def run_checks(device: torch.device, dtypes: list, impls: list[str], log: Callable = print) -> list[Check]:
    cases = make_cases()
    interpreted = device.type != "cuda"  # triton off CUDA runs only in its interpreter
    checks: list[Check] = []
    for line in RULE:
        log(line)
    log(
        "stated tolerances (atol, rtol): "
        + ", ".join(f"{dtype_name(d)} ({TOLERANCE[d][0]:g}, {TOLERANCE[d][1]:.3g})" for d in dtypes)
        + f"; the reference line (impl 'ref'): ({TOLERANCE[torch.float64][0]:g}, "
        f"{TOLERANCE[torch.float64][1]:g}) and no torch error"
    )
    if interpreted and "triton" in impls and triton_runs(torch.empty(1, 1)):
        log("triton runs in triton's CPU interpreter here: float32, the small cases only")
    log(f"{'loss':<44} {'impl':<8} {'dtype':<9} {'case':<19} worst error ≤ bound")

    def record(c: Check) -> None:
        checks.append(c)
        log(check_line(c))

    for case in cases:
        for spec in LOSSES:
            # the reference: dense float64 on the CPU, itself against the plain formula in float64
            c = Check(spec.label, "ref", "float64", case.name)
            try:
                exact64 = value_and_grads(library_call(spec, "dense", case.labels, case.ref_labels), case.x, case.y)
                plain = value_and_grads(plain_call(spec, case.labels, case.ref_labels), case.x, case.y)
                record(judge(c, plain, exact64, None, *TOLERANCE[torch.float64]))
            except Exception as e:  # noqa: BLE001
                record(_errored(c, e))
                continue
            for dtype in dtypes:
                try:
                    xr, yr = case.x.to(dtype), case.y.to(dtype)  # rounded: the reference sees the same inputs
                    exact = (
                        exact64
                        if dtype == torch.float64
                        else value_and_grads(
                            library_call(spec, "dense", case.labels, case.ref_labels), xr.double(), yr.double()
                        )
                    )
                    xd, yd = xr.to(device), yr.to(device)
                    lab = None if case.labels is None else case.labels.to(device)
                    rlab = None if case.ref_labels is None else case.ref_labels.to(device)
                    base = value_and_grads(plain_call(spec, lab, rlab), xd, yd)
                except Exception as e:  # noqa: BLE001
                    record(_errored(Check(spec.label, "torch", dtype_name(dtype), case.name), e))
                    continue
                for impl in impls:
                    if impl not in available_impls(device, dtype):
                        continue
                    if impl == "dense" and dtype == torch.float64 and device.type == "cpu":
                        continue  # the reference itself
                    if impl == "triton" and interpreted and case.large:
                        continue  # minutes in the interpreter; the small cases run the same kernels
                    c = Check(spec.label, impl, dtype_name(dtype), case.name)
                    try:
                        got = value_and_grads(library_call(spec, impl, lab, rlab), xd, yd)
                        record(judge(c, got, exact, base, *TOLERANCE[dtype]))
                    except Exception as e:  # noqa: BLE001
                        record(_errored(c, e))
    return checks


def _errored(c: Check, e: Exception) -> Check:
    c.status = "ERROR"
    c.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if os.environ.get("VSE_CHECK_TRACEBACK"):
        traceback.print_exc()
    return c


# --------------------------------------------------------------------------------------------
# 2. Timing
# --------------------------------------------------------------------------------------------


def vsepp_formula(x: torch.Tensor, y: torch.Tensor, max_violation: bool, margin: float = MARGIN) -> torch.Tensor:
    """The dense formula a user writes: the original VSE++ criterion on cosine scores, summed."""
    im, s = F.normalize(x, dim=1), F.normalize(y, dim=1)
    scores = im @ s.t()
    diagonal = scores.diag().view(-1, 1)
    cost_s = (margin + scores - diagonal).clamp(min=0)
    cost_im = (margin + scores - diagonal.t()).clamp(min=0)
    eye = torch.eye(scores.size(0), dtype=torch.bool, device=scores.device)
    cost_s, cost_im = cost_s.masked_fill(eye, 0), cost_im.masked_fill(eye, 0)
    if max_violation:
        cost_s, cost_im = cost_s.max(1)[0], cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_timing(device, sizes, D, dtype, budget_s: float, log: Callable = print) -> list[dict]:
    """Every row at every size in ``sizes``; see :func:`time_rows`."""
    log(
        f"forward+backward (the product: forward only), D={D}, {dtype_name(dtype)}, median over interleaved rounds; "
        "× columns: the median of the ratios within a round"
    )
    log(
        f"{'B':>6}  {'row':<44} {'impl':<8} {'ms':>9} {'× product':>10} {'× formula-MH':>13} {'× formula-SH':>13} "
        f"{'aten ops':>9}"
    )
    records = []
    for B in sizes:
        g = torch.Generator(device=device).manual_seed(B)
        x = torch.randn(B, D, device=device, generator=g).to(dtype).requires_grad_(True)
        y = torch.randn(B, D, device=device, generator=g).to(dtype).requires_grad_(True)
        rows = time_rows(device, x, y, budget_s)
        for rec in rows:
            log(
                f"{B:>6}  {rec['row']:<44} {rec['impl']:<8} {rec['ms']:>9.3f} {rec['x_product']:>9.2f}× "
                f"{rec['x_formula_mh']:>12.2f}× {rec['x_formula_sh']:>12.2f}× {rec['aten_ops']:>9}"
            )
        log(f"{'':>6}  ({rows[0]['rounds']} rounds)")
        records += rows
    return records


def time_rows(device: torch.device, x: torch.Tensor, y: torch.Tensor, budget_s: float) -> list[dict]:
    """The product, the two VSE++ formulas and every loss with ``impl="auto"`` on (x, y): each row
    called once per round, the rows in turn (the order rotated every round), after one warm-up call;
    the rounds fill about ``budget_s`` (3 to 21 of them, odd). Ratios: medians of per-round ratios."""
    B = x.shape[0]

    def fwd_bwd(f):
        def run():
            x.grad = y.grad = None
            f().backward()

        return run

    def product():
        with torch.no_grad():
            x @ y.t()

    rows = [
        ("product x @ y.T (forward)", "-", product),
        ("formula-MH (VSE++ criterion, max)", "dense", fwd_bwd(lambda: vsepp_formula(x, y, True))),
        ("formula-SH (VSE++ criterion, sum)", "dense", fwd_bwd(lambda: vsepp_formula(x, y, False))),
    ]
    for spec in LOSSES:
        fn = spec.make("auto")
        rows.append((spec.label, resolve_impl("auto", x, B * B, fn.norm().kind), fwd_bwd(lambda fn=fn: fn(x, y))))

    def timed(run) -> float:
        _sync(device)
        t = time.perf_counter()
        run()
        _sync(device)
        return time.perf_counter() - t

    first, ops = [], []
    for _, _, run in rows:
        run()  # warm-up: kernels compiled, buffers touched
        first.append(timed(run))
        ops.append(aten_ops(run))
    n_rounds = int(min(21, max(3, budget_s / max(sum(first), 1e-9))))
    n_rounds += 1 - n_rounds % 2  # odd: the median is one round's
    times: list[list[float]] = [[] for _ in rows]
    for r in range(n_rounds):
        shift = r % len(rows)
        for i in list(range(shift, len(rows))) + list(range(shift)):
            times[i].append(timed(rows[i][2]))
    x.grad = y.grad = None
    records = []
    for i, (name, impl, _) in enumerate(rows):
        rec = {"B": B, "D": x.shape[1], "dtype": dtype_name(x.dtype), "row": name, "impl": impl}
        rec["ms"] = statistics.median(times[i]) * 1e3
        rec["rounds"] = n_rounds
        rec["aten_ops"] = ops[i]
        for anchor, j in (("product", 0), ("formula_mh", 1), ("formula_sh", 2)):
            rec[f"x_{anchor}"] = statistics.median(t / a for t, a in zip(times[i], times[j]))
        records.append(rec)
    return records


def aten_ops(run: Callable) -> int:
    """The aten operations one call of ``run`` dispatches, forward and backward: what a GPU pays in
    launches at small B (a Triton kernel's launch is not an aten operation and is not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as count:
        run()
    return count.n


# --------------------------------------------------------------------------------------------
# Environment, arguments, main
# --------------------------------------------------------------------------------------------


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "not installed"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "vse_losses": vse_losses.__version__,
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()  # "highest": no TF32
    if device.type == "cpu":
        env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
    return env


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    values = _positive_ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return values[0]


def _dtypes(text: str) -> list[torch.dtype]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in DTYPES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(DTYPES)}, got {text!r}")
    return [DTYPES[n] for n in names]


def _impls(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in IMPLS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(IMPLS)}, got {text!r}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m vse_losses.check",
        description="Check every loss × impl against float64 on this machine, then time them (under a minute).",
    )
    ap.add_argument("--quick", action="store_true", help="correctness only, no timing")
    ap.add_argument("--json", metavar="PATH", help="write every result (and the environment) to this JSON file")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    ap.add_argument(
        "--impls", type=_impls, default=None, help="comma-separated impls to check (default: all that run here)"
    )
    ap.add_argument(
        "--dtypes",
        type=_dtypes,
        default=None,
        help="comma-separated dtypes to check (default: CPU float32,float64; GPU float32,bfloat16,float16)",
    )
    ap.add_argument(
        "--sizes", type=_positive_ints, default=None, help="batch sizes of the timing (CPU 128,1024; GPU 128,1024,4096)"
    )
    ap.add_argument("--dim", type=_positive_int, default=None, help="embedding size of the timing (default 1024)")
    ap.add_argument(
        "--timing-dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="dtype of the timing (CPU float32, GPU bfloat16)",
    )
    args = ap.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"argument --device: expected auto, cpu, cuda or cuda:N, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        ap.error(f"argument --device: expected auto, cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error("argument --device: CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            ap.error(f"argument --device: {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    args.device = device
    if args.impls and "triton" in args.impls:
        probe = torch.empty(1, 1, device=device)
        if not triton_runs(probe):
            why = "triton >= 3.3 is not importable" if not triton_available() else "no CUDA device"
            ap.error(
                f"argument --impls: triton cannot run on {device} here ({why}); "
                "TRITON_INTERPRET=1 runs it in triton's CPU interpreter"
            )
    if args.json:
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            ap.error(f"argument --json: directory {parent} does not exist")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device: torch.device = args.device
    cuda = device.type == "cuda"
    t0 = time.perf_counter()

    def log(*a) -> None:
        print(*a, flush=True)

    env = environment(device)
    log(f"# vse_losses self-check, {env['date']}")
    log(f"# device: {env['device']}")
    extra = f", float32 matmul precision {env['float32_matmul_precision']}"
    if not cuda:
        extra += f", OMP_WAIT_POLICY={env['omp_wait_policy'] or '(unset)'}"
        if os.environ.get("VSE_CHECK_SET_OMP_WAIT_POLICY"):
            extra += " (set by the self-check)"
    interp = f", TRITON_INTERPRET={env['triton_interpret']}" if env["triton_interpret"] else ""
    log(
        f"# torch {env['torch']}, triton {env['triton']}, vse_losses {env['vse_losses']}, "
        f"python {env['python']}{extra}{interp}"
    )

    dtypes = args.dtypes or ([torch.float32, torch.bfloat16, torch.float16] if cuda else [torch.float32, torch.float64])
    impls = args.impls or list(IMPLS)
    runnable = sorted({i for d in dtypes for i in available_impls(device, d)}, key=IMPLS.index)
    skipped = [i for i in impls if i not in runnable]
    log(
        f"\n== correctness: impls {', '.join(i for i in impls if i in runnable)}; dtypes "
        f"{', '.join(dtype_name(d) for d in dtypes)}"
        + (f"; not runnable here: {', '.join(skipped)} (triton_runs is False)" if skipped else "")
        + " =="
    )
    checks = run_checks(device, dtypes, impls, log)
    bad = [c for c in checks if c.status != "PASS"]
    log(
        f"correctness: {len(checks) - len(bad)} of {len(checks)} checks pass"
        + (f", {len(bad)} FAIL or ERROR" if bad else "")
        + f" ({time.perf_counter() - t0:.1f} s)"
    )

    def save(timing: list[dict]) -> None:
        if args.json:
            with open(args.json, "w") as f:
                doc = {**env, "ok": not bad, "failed": [c.name for c in bad], "checks": [c.__dict__ for c in checks]}
                json.dump({**doc, "timing": timing}, f, indent=1)
            log(f"wrote {args.json}")

    save([])  # the checks are kept if the timing fails or the run is cut off
    if not args.quick:
        sizes = args.sizes or ([128, 1024, 4096] if cuda else [128, 1024])
        D = args.dim or 1024
        dtype = getattr(torch, args.timing_dtype or ("bfloat16" if cuda else "float32"))
        log(f"\n== timing on {env['device']} ==")
        try:
            save(run_timing(device, sizes, D, dtype, budget_s=2.0 if cuda else 6.0, log=log))
        except Exception as e:  # noqa: BLE001  the timing is a report: the checks decide the status
            log(f"timing failed: {type(e).__name__}: {str(e)[:300]}")
    if bad:
        log(f"\nFAILED: {len(bad)} check(s) disagree with the float64 reference:")
        for c in bad:
            log(f"  {c.name}: {', '.join(c.failed) or c.error}")
    log(f"\n{'FAILED' if bad else 'ok'} in {time.perf_counter() - t0:.1f} s")
    return 1 if bad else 0


def run_as_script() -> int:
    """``python -m vse_losses.check``: on POSIX, started again with ``OMP_WAIT_POLICY=PASSIVE`` when
    it is unset (it is read when OpenMP loads, before this module runs). OpenMP's spinning default
    makes small CPU calls up to 100× slower on a shared machine (docs/benchmarks.md): with it, this
    check took a minute instead of 12 s on 2 loaded cores. Set the variable to choose otherwise."""
    if os.name == "posix" and "OMP_WAIT_POLICY" not in os.environ and hasattr(sys, "orig_argv"):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["VSE_CHECK_SET_OMP_WAIT_POLICY"] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, sys.orig_argv)
    return main()


if __name__ == "__main__":
    sys.exit(run_as_script())
