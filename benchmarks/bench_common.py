"""What the benchmarks and ``gpu_check.py`` share: the rows (losses × impls and anchors), their
inputs, and how peak memory is measured.

Every row is a closure ``run()`` doing one forward+backward (the product anchor: its forward only;
the anchors are defined in ``docs/design.md``), with the input gradients reset first, so that the
peak memory of a row includes the gradients of both inputs.

Peak memory (``peak_memory_mib``): the largest amount of memory the row's call holds beyond what was
allocated before it (the inputs). On CUDA: ``torch.cuda.max_memory_allocated()`` minus
``torch.cuda.memory_allocated()`` before the call (caching-allocator bytes in live tensors). On the
CPU: torch's CPU allocator events, recorded by ``torch.profiler`` with ``profile_memory=True`` over
one call and summed in time order (the largest running total). Both count tensor bytes handed out
by torch's allocator, not what the process maps (RSS), and neither sees scratch space that a
library (oneDNN, cuBLAS workspaces) takes outside it.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

# the repository root, so that ``python benchmarks/gpu_check.py`` imports the working tree's
# vse_losses even where the package is not installed (the device machine)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import vse_losses  # noqa: E402

MARGIN = 0.2
OOM_ERRORS: tuple[type, ...] = tuple(
    {getattr(torch, "OutOfMemoryError", RuntimeError), getattr(torch.cuda, "OutOfMemoryError", RuntimeError)}
    - {RuntimeError}
)

CLIP_TEMPERATURE = 0.07  # InfoNCE's τ in its rows and in the dense-CLIP anchor (CLIP's initial value)

# loss name -> (class name, constructor kwargs); the short names are the table's row labels
LOSSES: dict[str, tuple[str, dict]] = {
    "SH": ("SumHingeLoss", {}),
    "MH": ("MaxViolationLoss", {}),
    "TopK5": ("TopKViolationLoss", {"k": 5}),
    "Lp2": ("LpViolationLoss", {"p": 2.0}),
    "Mix0.5": ("MixedViolationLoss", {"mix": 0.5}),
}
# the temperature losses (margin 0.2 for LSE, the margin-free InfoNCE of CLIP); apart from LOSSES,
# which gpu_check.py's checks iterate over
TEMPERATURE_LOSSES: dict[str, tuple[str, dict]] = {
    "LSE": ("LogSumExpViolationLoss", {"temperature": 0.05}),
    "InfoNCE": ("InfoNCELoss", {"temperature": CLIP_TEMPERATURE, "margin": 0.0}),
}
ALL_LOSSES: dict[str, tuple[str, dict]] = {**LOSSES, **TEMPERATURE_LOSSES}

# anchors (defined in docs/design.md, "Benchmark anchors")
ANCHORS = {
    "dense-formula-MH": "the usual dense formula, max of hinges (naive, max_violation=True)",
    "dense-formula-SH": "the usual dense formula, sum of hinges (naive, max_violation=False)",
    "cosine-formula-MH": "the usual dense formula after F.normalize of both inputs, max of hinges",
    "cosine-formula-SH": "the usual dense formula after F.normalize of both inputs, sum of hinges",
    "compiled-dense-MH": "torch.compile(dynamic=True) of the dense MH formula",
    "PML-BatchHard-Triplet": "PML BatchHardMiner + TripletMarginLoss, cross-modal via ref_emb, one direction",
    "product": "the B×D @ D×B product alone, forward (tiled into a reused buffer where B×B does not fit)",
    "dense-CLIP": "CLIP's loss as usually written: normalise, S = x yᵀ/τ, F.cross_entropy both ways, mean",
    "Inf-CL": "Inf-CL's inf_cl.cal_inf_loss both ways, mean (CUDA, where the inf_cl package is importable)",
}


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def triton_impl_available() -> tuple[bool, str]:
    """Whether ``impl="triton"`` can run here, and why not."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        from vse_losses.ops import triton_available
    except Exception as e:  # noqa: BLE001
        return False, f"vse_losses.ops has no triton_available ({type(e).__name__})"
    if not triton_available():
        return False, "triton or the vse_losses triton kernels are not importable"
    return True, ""


def pml_available() -> tuple[bool, str]:
    try:
        import pytorch_metric_learning  # noqa: F401
        from pytorch_metric_learning import distances, losses, miners  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"pytorch-metric-learning not importable ({type(e).__name__}: {e})"
    return True, ""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Inputs and rows
# --------------------------------------------------------------------------------------------


def make_inputs(B: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Two (B, D) unit-norm leaf tensors requiring grad (images, captions)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = F.normalize(torch.randn(B, D, device=device, generator=g), dim=1).to(dtype)
    y = F.normalize(torch.randn(B, D, device=device, generator=g), dim=1).to(dtype)
    return x.requires_grad_(True), y.requires_grad_(True)


def naive(im: torch.Tensor, s: torch.Tensor, max_violation: bool) -> torch.Tensor:
    """The dense formula a user would write (the original VSE++ criterion: score matrix, diagonal, two
    hinge cost matrices, eye mask, max or sum), summed over the batch."""
    scores = im @ s.t()
    diagonal = scores.diag().view(-1, 1)
    d1 = diagonal.expand_as(scores)
    d2 = diagonal.t().expand_as(scores)
    cost_s = (MARGIN + scores - d1).clamp(min=0)
    cost_im = (MARGIN + scores - d2).clamp(min=0)
    mask = torch.eye(scores.size(0), device=scores.device, dtype=torch.bool)
    cost_s = cost_s.masked_fill(mask, 0)
    cost_im = cost_im.masked_fill(mask, 0)
    if max_violation:
        cost_s = cost_s.max(1)[0]
        cost_im = cost_im.max(0)[0]
    return cost_s.sum() + cost_im.sum()


_COMPILED: dict[str, Callable] = {}


def compiled_naive() -> Callable:
    if "naive" not in _COMPILED:
        _COMPILED["naive"] = torch.compile(naive, dynamic=True)
    return _COMPILED["naive"]


def clip_formula(x: torch.Tensor, y: torch.Tensor, temperature: float = CLIP_TEMPERATURE) -> torch.Tensor:
    """CLIP's loss as a user writes it: normalise, logits ``S = x yᵀ/τ``, cross-entropy of the
    rows and of the columns against the diagonal, their mean (= ``InfoNCE`` with ``MeanReducer``)."""
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    logits = x @ y.t() / temperature
    labels = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def inf_cl_formula(temperature: float = CLIP_TEMPERATURE) -> Callable:
    """CLIP's loss through Inf-CL (``inf_cl.cal_inf_loss``, its tiled triton kernels), symmetric as
    Inf-CL's own test writes it; raises RuntimeError where it cannot run."""
    try:
        from inf_cl import cal_inf_loss
    except Exception as e:  # noqa: BLE001  not installed, or its triton cannot load
        raise RuntimeError(f"inf_cl not importable ({type(e).__name__}: {e})") from None

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise RuntimeError("Inf-CL runs on CUDA only")
        D = x.shape[1]
        head = next((h for h in (256, 128, 64, 32, 16) if D % h == 0), None)
        if head is None:
            raise RuntimeError(f"Inf-CL needs D a multiple of 16, got D={D}")
        xn, yn = F.normalize(x, dim=1), F.normalize(y, dim=1)
        scale = torch.tensor(1 / temperature, device=x.device)
        return (cal_inf_loss(xn, yn, scale=scale, head_dim=head) + cal_inf_loss(yn, xn, scale=scale, head_dim=head)) / 2

    return run


def make_loss(loss: str, impl: str):
    cls_name, kwargs = ALL_LOSSES[loss]
    return getattr(vse_losses, cls_name)(**{"margin": MARGIN, **kwargs}, impl=impl)


def fwd_bwd(x: torch.Tensor, y: torch.Tensor, loss_of: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        y.grad = None
        loss_of().backward()

    return run


def product_fn(
    x: torch.Tensor, y: torch.Tensor, max_bytes: int | None = None, buffer_in_call: bool = False
) -> tuple[Callable[[], None], str]:
    """``x @ y.T`` without gradient. Where the B×M result would exceed ``max_bytes`` it is computed
    in row tiles into one buffer (the same flops, the memory of one tile), allocated in each call
    with ``buffer_in_call`` (so that it counts in the call's peak memory) or once here."""
    xd, yd = x.detach(), y.detach()
    B, M = xd.shape[0], yd.shape[0]
    elt = xd.element_size()
    if max_bytes is None or B * M * elt <= max_bytes:
        return (lambda: xd @ yd.t()), "product"
    rows = max(1, int(max_bytes // (M * elt)))
    yt = yd.t()
    held = None if buffer_in_call else torch.empty(rows, M, dtype=xd.dtype, device=xd.device)

    def run() -> None:
        buf = held if held is not None else torch.empty(rows, M, dtype=xd.dtype, device=xd.device)
        for r0 in range(0, B, rows):
            r1 = min(B, r0 + rows)
            torch.mm(xd[r0:r1], yt, out=buf[: r1 - r0])

    return run, f"product (tiled, {rows} rows)"


def anchor_fn(name: str, x: torch.Tensor, y: torch.Tensor, product_max_bytes: int | None = None):
    """The closure of an anchor row; raises ``RuntimeError`` with a reason where it cannot run."""
    if name == "product":
        return product_fn(x, y, product_max_bytes, buffer_in_call=True)[0]
    if name == "dense-formula-MH":
        return fwd_bwd(x, y, lambda: naive(x, y, True))
    if name == "dense-formula-SH":
        return fwd_bwd(x, y, lambda: naive(x, y, False))
    if name in ("cosine-formula-MH", "cosine-formula-SH"):
        # what the default (cosine) paired call replaces: the inputs' rows need not be unit norm
        mh = name.endswith("MH")
        return fwd_bwd(x, y, lambda: naive(F.normalize(x, dim=1), F.normalize(y, dim=1), mh))
    if name == "compiled-dense-MH":
        c = compiled_naive()
        return fwd_bwd(x, y, lambda: c(x, y, True))
    if name == "PML-BatchHard-Triplet":
        ok, why = pml_available()
        if not ok:
            raise RuntimeError(why)
        from pytorch_metric_learning import distances, losses, miners

        labels = torch.arange(x.shape[0], device=x.device)
        tml = losses.TripletMarginLoss(margin=MARGIN, distance=distances.DotProductSimilarity())
        bh = miners.BatchHardMiner(distance=distances.DotProductSimilarity())

        def pml_bh():
            idx = bh(x, labels, y, labels)
            return tml(x, labels, idx, y, labels)

        return fwd_bwd(x, y, pml_bh)
    if name == "dense-CLIP":
        return fwd_bwd(x, y, lambda: clip_formula(x, y))
    if name == "Inf-CL":
        if not x.is_cuda:
            raise RuntimeError("Inf-CL runs on CUDA only")
        f = inf_cl_formula()
        return fwd_bwd(x, y, lambda: f(x, y))
    raise KeyError(name)


def loss_fn(loss: str, impl: str, x: torch.Tensor, y: torch.Tensor):
    fn = make_loss(loss, impl)
    return fwd_bwd(x, y, lambda: fn(x, y))


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------

MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() - memory_allocated() before the call",
    "cpu": "torch.profiler(profile_memory=True): largest running total of torch CPU allocator events in the call",
}


def _cpu_peak_bytes(run: Callable[[], None]) -> int:
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch._C._profiler import _EventType
    except Exception:  # noqa: BLE001
        _EventType = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    allocs: list[tuple[int, int]] = []
    tree = getattr(prof.profiler.kineto_results, "experimental_event_tree", None)
    if _EventType is not None and tree is not None:
        stack = list(tree())
        while stack:
            e = stack.pop()
            stack.extend(e.children)
            if e.tag == _EventType.Allocation and str(e.extra_fields.device).startswith("cpu"):
                allocs.append((e.start_time_ns, int(e.extra_fields.alloc_size)))
    else:  # older API: the [memory] events of the flat list
        for e in prof.events():
            if e.name == "[memory]":
                allocs.append((int(e.time_range.start * 1000), int(e.cpu_memory_usage)))
    allocs.sort(key=lambda a: a[0])
    total = peak = 0
    for _, size in allocs:
        total += size
        peak = max(peak, total)
    return peak


def peak_memory_mib(run: Callable[[], None], device: torch.device, clear=()) -> float:
    """Extra memory of one call of ``run`` (MiB); see the module docstring.

    ``clear``: tensors whose ``.grad`` is dropped before the baseline is taken, so that the
    gradients the call makes count in its peak on every device.
    """
    for t in clear:
        t.grad = None
    free_memory(device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return _cpu_peak_bytes(run) / 2**20


def median_time_s(run: Callable[[], None], device: torch.device, reps: int) -> tuple[float, list[float]]:
    """Median wall time of ``reps`` calls (CUDA events on the GPU)."""
    ts: list[float] = []
    for _ in range(reps):
        if device.type == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            sync(device)
            a.record()
            run()
            b.record()
            sync(device)
            ts.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t)
    s = sorted(ts)
    return s[len(s) // 2], ts
