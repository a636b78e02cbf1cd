"""The fast implementations of the losses' operations, behind one :class:`Backend` per ``impl``.

:func:`resolve_backend` turns ``impl`` into a backend once per call; nothing else in the library
looks at the string. A backend holds the operations the planner (``vse_losses.planner``) needs:

- ``negative_topk`` — the k hardest negatives of every row and every column of ``x yᵀ`` (no
  gradient: the loss recomputes the selected scores by ``row_dots``);
- ``hinge_norm_rows`` / ``hinge_norm_pairs`` — ℓp norms of hinge rows, ``T_i = (Σ_j [q_i·k_j −
  t_i]_+^p)^{1/p}``, with a backward that recomputes score tiles; ``hinge_norm_pairs`` folds the
  thresholds ``t = s(a, p) − α`` and the cosine in, as ``lse_pairs`` does;
- ``row_dots`` — ``q[qi_n] · k[ki_n]`` without copies of the rows;
- ``max_violation_paired`` — the paired MH terms in O(B) memory, the cosine folded in;
- ``max_violation_small`` — the paired MH of a small batch in one launch (Triton only);
- ``lse_pairs`` — both directions' ``log(1 + Σ exp((S − t)/τ))`` of every positive pair, an online
  log-sum-exp over score tiles (the temperature axis: LogSumExpViolationLoss, InfoNCELoss); the
  thresholds ``t = s(a, p) − α`` and the cosine folded in, as ``max_violation_paired`` does.

Each operation exists as ``chunked`` (torch, tiles of rows, any device; modules ``chunked_*``)
and ``triton`` (the score tile fused with the reductions; modules ``triton_*``, plumbing in
``triton_common``), under matching names. Neither holds anything B×M. ``dense`` builds the
score matrix and its masks and has no operations here: the planner computes it in torch, the
paired call by :mod:`~vse_losses.ops.dense_paired` (the formula with its backward written out).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from .chunked_hinge_norm import hinge_norm_rows_chunked
from .chunked_hinge_norm_pairs import hinge_norm_pairs_chunked
from .chunked_lse_pairs import lse_pairs_chunked
from .chunked_max_violation_backward import mh_side_chunked
from .chunked_negative_topk import negative_topk_chunked
from .chunked_row_dots import RowDots, row_dots_forward_chunked
from .max_violation_paired import MaxViolationPaired

__all__ = [
    "Backend",
    "DENSE",
    "CHUNKED",
    "resolve_backend",
    "kernel_backend",
    "resolve_impl",
    "checked_backend",
    "kernel_config",
    "TritonFallbackWarning",
    "triton_available",
    "triton_runs",
    "negative_topk",
    "hinge_norm_rows",
    "hinge_norm_pairs",
    "row_dots",
    "AUTO_CHUNKED_MIN_PAIRS",
    "AUTO_CHUNKED_MIN_PAIRS_BY_KIND",
]

# B·M above which "auto" leaves the dense formula for the chunked one on the CPU: below it the
# dense formula is as fast and its few B×M buffers are small.
AUTO_CHUNKED_MIN_PAIRS = 512 * 512
# Where the chunked path gains later, per norm kind (the others, i.e. MH: AUTO_CHUNKED_MIN_PAIRS):
# measured on the CPU, one thread, D=256 (docs/benchmarks.md), chunked/dense of the paired call
# at B = 512, 1024, 2048 is 0.95, 0.66, 0.47 for MH, but 1.3–1.8, 1.1–1.4 and 0.8–1.0 for SH,
# top-k, ℓ2, the mix and the temperature losses, whose dense call is a few passes over S.
AUTO_CHUNKED_MIN_PAIRS_BY_KIND = {kind: 1536 * 1536 for kind in ("sum", "topk", "lp", "mix", "lse", "infonce")}


@dataclass(frozen=True)
class Backend:
    """One implementation of every operation (see the module docstring); ``dense``: none."""

    name: str
    row_dots_forward: Callable | None = None
    negative_max: Callable | None = None  # k = 1 fused search, else negative_topk_chunked
    hinge_norm_rows: Callable | None = None
    hinge_norm_pairs: Callable | None = None
    mh_side: Callable | None = None
    max_violation_small: Callable | None = None  # (x, y, margin, cosine, guard) for B ≤ the next
    max_violation_small_batch: Callable | None = None  # (device) → the largest B it takes there
    lse_pairs: Callable | None = None

    @property
    def dense(self) -> bool:
        return self.row_dots_forward is None

    def row_dots(self, q, k, qi=None, ki=None):
        """``q[qi_n] · k[ki_n]``, float32 (float64 for float64 inputs), differentiable in q and k."""
        return RowDots.apply(q, k, qi, ki, self.row_dots_forward)

    def negative_topk(self, x, y, x_labels, y_labels, self_ref, k, paired=False, scales=None):
        """See :func:`negative_topk`."""
        if k == 1 and self.negative_max is not None:
            rv, ri, cv, ci = self.negative_max(x, y, x_labels, y_labels, self_ref, scales=scales)
            return rv[:, None], ri[:, None], cv[:, None], ci[:, None]
        return negative_topk_chunked(x, y, x_labels, y_labels, self_ref, k, paired=paired, scales=scales)

    def max_violation_paired(self, x, y, margin, cosine):
        """``(i2t, t2i)`` MH terms of the paired batch; :mod:`~vse_losses.ops.max_violation_paired`."""
        return MaxViolationPaired.apply(x, y, float(margin), bool(cosine), self)


DENSE = Backend("dense")
CHUNKED = Backend(
    "chunked",
    row_dots_forward=row_dots_forward_chunked,
    hinge_norm_rows=hinge_norm_rows_chunked,
    hinge_norm_pairs=hinge_norm_pairs_chunked,
    mh_side=mh_side_chunked,
    lse_pairs=lse_pairs_chunked,
)


@functools.cache
def _triton_backend() -> Backend:
    # imported at first use: importing triton is slow, and the interpreter is chosen at first launch
    from .triton_hinge_norm import hinge_norm_rows_triton
    from .triton_hinge_norm_pairs import hinge_norm_pairs_triton
    from .triton_lse_pairs import lse_pairs_triton
    from .triton_max_violation_backward import mh_side_triton
    from .triton_max_violation_small import max_batch, max_violation_small
    from .triton_negative_max import negative_max_triton
    from .triton_row_dots import row_dots_forward_triton

    return Backend(
        "triton",
        row_dots_forward=row_dots_forward_triton,
        negative_max=negative_max_triton,
        hinge_norm_rows=hinge_norm_rows_triton,
        hinge_norm_pairs=hinge_norm_pairs_triton,
        mh_side=mh_side_triton,
        max_violation_small=max_violation_small,
        max_violation_small_batch=max_batch,
        lse_pairs=lse_pairs_triton,
    )


def triton_available() -> bool:
    """A triton the kernels support (>= 3.3) is importable."""
    from .triton_common import TRITON_AVAILABLE

    return TRITON_AVAILABLE


def triton_runs(*tensors: torch.Tensor) -> bool:
    """The one test of whether the Triton kernels can run on these tensors: a supported triton,
    and every tensor float32/float16/bfloat16 on a CUDA device (or anywhere under
    ``TRITON_INTERPRET=1``, triton's CPU interpreter)."""
    from .triton_common import is_interpreting

    return triton_available() and all(
        (t.is_cuda or is_interpreting()) and t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in tensors
    )


def resolve_backend(
    impl: str, x: torch.Tensor, n_pairs: int, kind: str | None = None, y: torch.Tensor | None = None
) -> Backend:
    """The backend for ``impl`` on x (and y, the other operand, where there is one): ``auto`` is
    triton on CUDA where it runs on both, chunked when B·M is large (from
    ``AUTO_CHUNKED_MIN_PAIRS_BY_KIND`` for the loss's norm ``kind``, else
    ``AUTO_CHUNKED_MIN_PAIRS``), dense otherwise. An explicit ``triton`` that cannot run raises
    ``ValueError``."""
    ts = (x,) if y is None else (x, y)
    if impl == "auto":
        if x.is_cuda and triton_runs(*ts):
            return _triton_backend()
        return CHUNKED if n_pairs >= AUTO_CHUNKED_MIN_PAIRS_BY_KIND.get(kind, AUTO_CHUNKED_MIN_PAIRS) else DENSE
    if impl == "triton":
        if not triton_runs(*ts):
            from .triton_common import triton_requirement

            got = ", ".join(f"{t.device} {t.dtype}" for t in ts)
            raise ValueError(
                f"impl='triton' needs {triton_requirement()} and CUDA tensors of "
                f"float32/float16/bfloat16 (got {got}); use impl='chunked' on the CPU, or set "
                "TRITON_INTERPRET=1 before importing to test"
            )
        return _triton_backend()
    if impl == "chunked":
        return CHUNKED
    if impl == "dense":
        return DENSE
    raise ValueError(f"impl must be one of 'auto', 'dense', 'chunked', 'triton', got {impl!r}")


class TritonFallbackWarning(UserWarning):
    """The Triton kernels failed for a configuration under ``impl="auto"``; it runs ``chunked``."""


# checked_backend probes triton's CPU interpreter too (tests of the fallback set it)
PROBE_INTERPRETED = False

# configurations (checked_backend's keys) whose first call ran on Triton without error, and those
# where Triton failed, with the cause
_TRITON_OK: set[Hashable] = set()
_TRITON_FAILED: dict[Hashable, str] = {}


def kernel_config(op: str, *args) -> tuple:
    """The key of a call for :func:`checked_backend`: what selects its kernels, and nothing that
    changes from step to step while they stay the same. Tensors by device, dtype and size class
    (:func:`_size_class`); a :class:`~vse_losses.norms.Norm` by kind, selection k, ℓp mode and
    whether τ is a tensor (not λ or τ's value: a warm-up changes them every step); floats (the
    margin) by type; anything else by value."""

    def key(v):
        if torch.is_tensor(v):
            return ("tensor", v.device, v.dtype, tuple(map(_size_class, v.shape)))
        if isinstance(v, float):
            return float
        if hasattr(v, "selection_k") and hasattr(v, "hinge_p"):  # a Norm (not imported: a cycle)
            p = v.hinge_p
            p_mode = p if p in (None, 1.0, 2.0) else "p"  # the kernels' P_MODE
            return ("norm", v.kind, v.selection_k, p_mode, torch.is_tensor(v.temperature))
        return v

    return (op, *map(key, args))


def _size_class(n: int):
    """A size as the kernels see it: exactly up to 1024 (the one-launch kernels' tiles follow B),
    above by whether it is a whole number of the 128 and 16 that tiles and triton's argument
    specialisation test."""
    return n if n <= 1024 else ("large", n % 128 == 0, n % 16 == 0)


def checked_backend(
    impl: str, backend: Backend, config: Hashable, probe: Callable[[Backend], object], device: torch.device
) -> Backend:
    """``backend``, unless it is Triton and its kernels fail for ``config`` (:func:`kernel_config`).

    The kernels compile at first launch for the shapes, dtypes and options of a call, so a GPU or
    driver they do not suit (shared memory or registers out of resources, an architecture or
    driver triton does not support) fails there, forward or backward. The first call of each
    ``config`` runs ``probe(backend)``, a forward and backward of the call (on inputs detached
    from the caller's graph), then synchronises ``device`` so that a fault of a running kernel
    surfaces here too. If it raises, under ``auto`` the configuration runs ``chunked`` from then
    on, after one :class:`TritonFallbackWarning` naming the cause; under ``impl="triton"`` a
    ``RuntimeError`` names it. ``ValueError`` (bad input) and out-of-memory errors are the
    caller's and propagate.
    """
    if backend.name != "triton" or config in _TRITON_OK:
        return backend
    if config in _TRITON_FAILED:
        return CHUNKED
    if torch.compiler.is_compiling():
        return backend
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return backend  # a probe's backward cannot run inside a CUDA graph capture
    from .triton_common import is_interpreting

    if is_interpreting() and not PROBE_INTERPRETED:  # the interpreter compiles nothing
        return backend
    try:
        probe(backend)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except (ValueError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:  # noqa: BLE001  whatever triton, ptxas or the driver raise
        lines = str(e).strip().splitlines()
        cause = f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
        if impl == "triton":
            raise RuntimeError(
                f"impl='triton' failed on this GPU for this call ({cause}); impl='chunked' computes the same "
                "loss in torch, and impl='auto' falls back to it"
            ) from e
        _TRITON_FAILED[config] = cause
        warnings.warn(
            f"vse_losses: the Triton kernels failed ({cause}); this configuration runs impl='chunked' from now on "
            "(the same values, in torch)",
            TritonFallbackWarning,
            stacklevel=2,
        )
        return CHUNKED
    _TRITON_OK.add(config)
    return backend


def resolve_impl(impl: str, x: torch.Tensor, n_pairs: int, kind: str | None = None) -> str:
    """The name of :func:`resolve_backend`'s choice."""
    return resolve_backend(impl, x, n_pairs, kind).name


def kernel_backend(impl: str, x: torch.Tensor) -> Backend:
    """The backend that runs single operations (the functions below): they are kernels, not
    losses, so ``dense`` and ``auto`` on the CPU mean chunked."""
    backend = resolve_backend(impl, x, AUTO_CHUNKED_MIN_PAIRS)
    return CHUNKED if backend.dense else backend


def negative_topk(
    x, y, x_labels, y_labels, self_ref: bool, k: int, impl: str = "chunked", paired: bool = False, scales=None
):
    """The k largest negative scores of each row and each column of ``x yᵀ``, in float32.

    x: (B, D), y: (M, D); x_labels (B,), y_labels (M,) integers; (i, j) is a negative iff
    ``x_labels[i] != y_labels[j]`` and, with ``self_ref``, ``i != j``.
    Returns ``row_val (B, k), row_idx (B, k), col_val (M, k), col_idx (M, k)``, values in
    descending order, ``-inf`` (index 0) where a row has fewer than k negatives; ties go to the
    lowest index. ``paired``: the labels are ``arange(B)`` on both sides (B = M), which spares the
    chunked kernel the search for same-label entries. ``scales``: ``(c_x (B,), c_y (M,))`` float32, the
    scores are then ``c_i c_j x_i·y_j`` (cosine similarity of raw embeddings, with c = 1/‖·‖).
    """
    return kernel_backend(impl, x).negative_topk(x, y, x_labels, y_labels, self_ref, k, paired=paired, scales=scales)


def hinge_norm_rows(q, keys, t, q_labels, k_labels, q_self, p: float, impl: str = "chunked"):
    """``T_i = (Σ_j h_ij^p)^{1/p}``, ``h_ij = [q_i·k_j − t_i]_+`` over the negatives j of row i.

    q: (N, D), keys: (M, D), t: (N,); j is a negative of row i iff ``q_labels[i] != k_labels[j]``
    and ``j != q_self[i]`` (``-1``: none excluded). Differentiable in q, keys and t. → (N,) float32.
    """
    return kernel_backend(impl, q).hinge_norm_rows(q, keys, t, q_labels, k_labels, q_self, p)


def hinge_norm_pairs(
    x,
    y,
    margin,
    a,
    p_idx,
    labels,
    ref_labels,
    self_ref: bool,
    p: float,
    do_i2t: bool = True,
    do_t2i: bool = True,
    impl: str = "chunked",
    paired: bool = False,
    cosine: bool = False,
):
    """Both directions' ℓp hinge norms of every positive pair ``(a_j, p_j)``, threshold
    ``t_j = s(a_j, p_j) − α_j`` (the pair's score less its margin).

    ``T¹_j`` over the negatives n of row a_j of ``[s(a_j, n) − t_j]_+``, ``T²_j`` over the
    negatives n of column p_j of ``[s(n, p_j) − t_j]_+`` (negatives as in :func:`negative_topk`),
    ``s(i, n) = x_i·y_n``, or with ``cosine`` the cosine of the rows (the norms folded into the
    score tiles: no normalised copies of x and y). x: (B, D), y: (M, D); ``margin`` α: a float or
    a tensor broadcastable to (P,) (differentiable: each pair's own margin); ``(a, p_idx)`` (P,)
    the pairs, rows ascending. Differentiable in x, y and α: the pairs' scores are computed inside
    the operation and their gradient added in its backward. Returns ``(T¹, T²)``, each (P,)
    float32 (float64 for float64 inputs; zeros for a direction not asked for). ``chunked`` makes
    one pass over row tiles for both directions; ``triton`` computes both directions' gradients in
    one backward where pair j is (j, j) (the usual paired batch), and runs the per-row kernels of
    :func:`hinge_norm_rows` once per direction otherwise. ``paired``: the labels are ``arange(B)``
    and the pairs (j, j), known without looking at them.
    """
    return kernel_backend(impl, x).hinge_norm_pairs(
        x, y, margin, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired, cosine
    )


def row_dots(q, k, qi=None, ki=None, impl: str = "chunked"):
    """``s_n = q[qi_n] · k[ki_n]`` in float32 (float64 for float64 inputs), differentiable in q and k.

    q: (Bq, D), k: (Bk, D); qi, ki: (N,) int64 row indices, or None for rows 0 … N−1 (aligned).
    """
    return kernel_backend(impl, q).row_dots(q, k, qi, ki)
