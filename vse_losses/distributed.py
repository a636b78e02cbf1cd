"""Global negatives across the ranks of a ``torch.distributed`` process group (docs/distributed.md).

With ``distributed=True`` every rank

1. gathers both modalities of every rank *with gradient* (:func:`gather_batch`; local batch
   sizes may differ between ranks) and their labels; without labels the labels become the
   global row index, so row a still pairs with column a;
2. computes only the terms whose query is local — image→caption terms of the positive pairs
   ``(a, p)`` whose row ``a`` is local, caption→image terms of those whose column ``p`` is local —
   against the whole global batch (every impl: ``violation_terms(..., query_rows, query_cols)``);
   over all ranks every term of the concatenated batch is computed exactly once;
3. reduces them so that the *sum* over ranks of the losses is ``W`` times the single-process
   loss (:func:`reduce_terms`): ``SumReducer`` → ``W·Σ local terms``; ``MeanReducer`` →
   ``W·Σ local terms / T`` with ``T`` the global number of terms (one ``all_reduce``);
   ``ThresholdReducer``/``AvgNonZeroReducer`` likewise over the selected terms. Other reducers
   get this rank's terms, unscaled.

The backward of the gather sums the gradients of every rank's loss into the local rows, so
after DDP's averaging (sum over ranks, divided by ``W``) each parameter gets
``(1/W)·∂(Σ_r L_r)/∂θ = ∂L/∂θ``: exactly the gradient of one process on the concatenated
batch; the mean of the ranks' loss values is the single-process loss.

Every rank must call the loss (and its backward) with the same options, as for any collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .pairs import resolve_labels

__all__ = [
    "is_initialized",
    "world_size",
    "gather_rows",
    "gather_batch",
    "GlobalBatch",
    "reduce_terms",
    "reducer_rule",
]


def is_initialized() -> bool:
    """Whether a default ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """World size of the default process group; ``ValueError`` when there is none."""
    if not is_initialized():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group: launch with "
            "torchrun and call torch.distributed.init_process_group('nccl' on GPUs, 'gloo' on CPUs) "
            "before the first loss call, or use distributed=False for one process"
        )
    return dist.get_world_size()


# --------------------------------------------------------------------------------------------
# Gather with gradient
# --------------------------------------------------------------------------------------------


class _AllGather(torch.autograd.Function):
    """``all_gather`` of equal-shaped tensors → (W, *shape). The backward sums the gradient
    that every rank's loss gives to the gathered tensor and returns this rank's slice
    (reduce-scatter on NCCL, an all-reduce elsewhere: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x):
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank = rank
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)  # reduced in place: never alias autograd's
        if grad.is_cuda and "nccl" in str(dist.get_backend()).lower():
            out = grad.new_empty(grad.shape[1:])
            dist.reduce_scatter_tensor(out, grad.flatten(0, 1))
            return out
        dist.all_reduce(grad)
        return grad[ctx.rank]


def _gather_sizes(values: Sequence[int], device: torch.device) -> list[list[int]]:
    """All ranks' small integer vectors (one collective) → a list per rank."""
    t = torch.tensor(list(values), dtype=torch.long, device=device)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return [p.tolist() for p in parts]


def _pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero rows appended to ``t`` up to ``n`` rows (differentiable)."""
    if t.shape[0] == n:
        return t
    return torch.cat([t, t.new_zeros((n - t.shape[0],) + tuple(t.shape[1:]))])


def gather_rows(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenation of every rank's ``x`` along dim 0, in rank order, differentiable.

    ``sizes`` (rows per rank) may differ between ranks; omitted, they are gathered first. The
    gradient of the local rows is the sum over ranks of the gradients that their losses give
    to them (so call the backward on every rank).
    """
    if sizes is None:
        sizes = [s[0] for s in _gather_sizes([x.shape[0]], x.device)]
    n_max = max(sizes)
    parts = _AllGather.apply(_pad_rows(x, n_max))
    return torch.cat([parts[r, : sizes[r]] for r in range(len(sizes))])


# --------------------------------------------------------------------------------------------
# The global batch
# --------------------------------------------------------------------------------------------


@dataclass
class GlobalBatch:
    """Every rank's rows, concatenated in rank order.

    x: (N, D) first modality (queries of image→caption), with gradient to the local rows;
    y: (M, D) second modality, or ``None`` for one modality (then y is x);
    labels (N,), ref_labels (M,): concrete global labels (the global row index without labels);
    rows: this rank's rows ``[r0, r1)`` of x; cols: its rows ``[c0, c1)`` of y (= rows for one
    modality); world: the world size; has_labels: whether the caller passed labels.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    labels: torch.Tensor
    ref_labels: torch.Tensor
    rows: tuple[int, int]
    cols: tuple[int, int]
    world: int
    has_labels: bool

    def guard(self) -> torch.Tensor:
        """0·Σx (+0·Σy) on the gathered tensors: NaN when any rank's input holds NaN/Inf, and
        the loss of every rank reaches the gather, so that every rank joins its backward."""
        g = self.x.sum(dtype=torch.float32) * 0
        return g if self.y is None else g + self.y.sum(dtype=torch.float32) * 0


def gather_batch(
    x: torch.Tensor,
    y: torch.Tensor | None,
    labels: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
) -> GlobalBatch:
    """Gather both modalities (with gradient) and labels of every rank of the default group.

    x: (B_r, D); y: (M_r, D) or ``None`` (one modality); labels (B_r,) or ``None`` (paired:
    row a with column a, then B_r must equal M_r); ref_labels (M_r,) or ``None`` (= labels).
    Local batch sizes may differ between ranks. All ranks must agree on D, on passing labels or
    not and on one or two modalities (a ``ValueError`` on every rank otherwise).
    Four collectives: the sizes, the labels, the embeddings (both modalities in one), and in
    the backward one all-reduce (gloo) or reduce-scatter (NCCL) of their gradient.
    """
    self_ref = y is None
    B = x.shape[0]
    M = B if self_ref else y.shape[0]
    # local validation first (before any collective), then concrete local labels
    lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    table = _gather_sizes([B, M, x.shape[1], int(labels is not None), int(self_ref)], x.device)
    for name, col in (("embedding size", 2), ("labels given (1) or not (0)", 3), ("one modality (1) or two (0)", 4)):
        if len({row[col] for row in table}) > 1:
            raise ValueError(
                f"distributed=True: ranks disagree on the {name}: {[row[col] for row in table]} "
                "(rank order); every rank must call the loss the same way"
            )
    b_sizes, m_sizes = [row[0] for row in table], [row[1] for row in table]
    rank = dist.get_rank()
    r0, c0 = sum(b_sizes[:rank]), sum(m_sizes[:rank])
    if labels is None:
        # paired form: the global row index, so that row a still pairs with column a
        lab, ref_lab = lab + r0, ref_lab + c0

    # labels, then embeddings: one collective each for both modalities, every rank's x padded to
    # the largest local B and its y to the largest local M, so that all ranks send equal shapes
    bm, mm = max(b_sizes), max(m_sizes)

    def split(parts):
        first = torch.cat([parts[r, : b_sizes[r]] for r in range(len(b_sizes))])
        if self_ref:
            return first, None
        return first, torch.cat([parts[r, bm : bm + m_sizes[r]] for r in range(len(m_sizes))])

    def pack(a, b):
        return _pad_rows(a, bm) if self_ref else torch.cat([_pad_rows(a, bm), _pad_rows(b, mm)])

    lab_parts = [torch.empty(bm if self_ref else bm + mm, dtype=torch.long, device=x.device) for _ in b_sizes]
    dist.all_gather(lab_parts, pack(lab.long(), ref_lab.long()).contiguous())
    g_lab, g_ref = split(torch.stack(lab_parts))
    if self_ref:
        X, Y = split(_AllGather.apply(pack(x, None)))
        g_ref = g_lab
    else:
        dtype = torch.promote_types(x.dtype, y.dtype)
        X, Y = split(_AllGather.apply(pack(x.to(dtype), y.to(dtype))))
    rows = (r0, r0 + B)
    cols = rows if self_ref else (c0, c0 + M)
    return GlobalBatch(X, Y, g_lab, g_ref, rows, cols, len(b_sizes), labels is not None)


# --------------------------------------------------------------------------------------------
# Reduction
# --------------------------------------------------------------------------------------------


def reduce_terms(terms: torch.Tensor, rule: tuple, world: int) -> torch.Tensor:
    """This rank's share of the global reduction of the terms, scaled so that the ranks' losses
    sum to ``world`` × the single-process loss (DDP then averages the gradients by ``world``).

    rule: ``("sum",)`` → ``W·Σ local``; ``("mean",)`` → ``W·Σ local / T`` with ``T`` the global
    number of terms; ``("threshold", low, high)`` (PML's ThresholdReducer, AvgNonZeroReducer:
    low=0) → ``W·Σ selected local / T_selected``, the selection ``low < term < high`` made on
    the terms, which are the single-process terms. No term on any rank gives 0.
    """
    kind = rule[0]
    if kind == "sum":
        return terms.sum() * world
    if kind == "mean":
        keep = None
    elif kind == "threshold":
        low, high = rule[1], rule[2]
        keep = torch.ones_like(terms, dtype=torch.bool)
        if low is not None:
            keep &= terms.detach() > low
        if high is not None:
            keep &= terms.detach() < high
    else:
        raise ValueError(f"unknown reduction rule {rule!r}")
    n = torch.tensor(
        [float(terms.numel() if keep is None else keep.sum().item())], dtype=torch.float64, device=terms.device
    )
    dist.all_reduce(n)
    total = int(n.item())
    if total == 0:
        return terms.sum() * 0  # no term anywhere, or nothing past the filter: 0, as in one process
    if kind == "mean":
        return terms.sum() * (world / total)
    return torch.where(keep, terms, torch.zeros_like(terms)).sum() * (world / total)


def reducer_rule(reducer) -> tuple | None:
    """The :func:`reduce_terms` rule of a PML reducer for the main loss, ``None`` where the
    distributed reduction is not exact (any other reducer)."""
    from pytorch_metric_learning.reducers import MeanReducer, MultipleReducers, SumReducer, ThresholdReducer

    if isinstance(reducer, MultipleReducers):  # PML wraps the reducer when there is a regulariser
        reducer = reducer.reducers["loss"] if "loss" in reducer.reducers else reducer.default_reducer
    if type(reducer) is MeanReducer:
        return ("mean",)
    if type(reducer) is SumReducer:
        return ("sum",)
    if isinstance(reducer, ThresholdReducer) and type(reducer).element_reduction is ThresholdReducer.element_reduction:
        return ("threshold", reducer.low, reducer.high)
    return None
