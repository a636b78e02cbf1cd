"""Order embeddings' similarity (Vendrov et al., 2016), the VSE++ code's ``--measure order``:

    s(x_i, y_j) = −‖max(0, y_j − x_i)‖₂   over the embedding dimensions,

x the images, y the captions: 0 (the largest score) when the caption lies below the image in every
dimension, the image entailing it. As a PML distance (:class:`OrderSimilarity`) it works with every
loss and miner of this library, which compute their terms from its (B, M) score matrix the way they
do for any distance other than the dot product, and with PML's own losses.

Implementations (``impl``): ``dense`` broadcasts a (B, M, D) tensor; ``chunked`` takes the rows of
x a chunk at a time and recomputes each chunk in its backward, never holding more than
``chunk_rows·M·D`` numbers besides S (``ops/chunked_order_scores.py``); ``auto`` is what
``ops.resolve_backend`` picks for a problem of B·M·D numbers, with the chunked formula on CUDA.
There is no Triton kernel: ``impl="triton"`` is a ``ValueError``.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from . import _checks
from .ops import resolve_backend
from .ops.chunked_order_scores import order_scores_chunked, order_scores_dense

__all__ = ["OrderSimilarity", "order_scores"]

ORDER_IMPLS = ("auto", "dense", "chunked")


def check_order_impl(impl: str) -> str:
    if impl == "triton":
        raise ValueError(
            "impl='triton': the order similarity has no Triton kernel; use impl='chunked' (rows in chunks, on any "
            "device) or 'auto' (which takes the chunked formula on CUDA)"
        )
    return _checks.check_choice("impl", impl, ORDER_IMPLS)


def _check_chunk_rows(chunk_rows) -> int | None:
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be an integer >= 1 or None (as many as fit), got {chunk_rows!r}")
    return chunk_rows


def order_scores(x: torch.Tensor, y: torch.Tensor, impl: str = "auto", chunk_rows: int | None = None) -> torch.Tensor:
    """S[i, j] = −‖max(0, y_j − x_i)‖₂: x (B, D) images, y (M, D) captions → S (B, M), float32
    (float64 for float64 inputs), differentiable in x and y (0 gradient where S = 0).

    impl: ``"auto"``, ``"dense"`` or ``"chunked"`` (module docstring); chunk_rows: rows of x per
    chunk of the chunked formula (None: as many as keep a chunk within 2²² numbers)."""
    check_order_impl(impl)
    _checks.check_pair(x, y, ("x", "y"))
    _check_chunk_rows(chunk_rows)
    wide = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    x, y = x.to(wide), y.to(wide)
    # the dense formula holds B·M·D numbers where a dot product's holds B·M: that is the size auto weighs
    backend = resolve_backend(impl, x, x.shape[0] * y.shape[0] * x.shape[1])
    if backend.dense:
        return order_scores_dense(x, y)
    return order_scores_chunked(x, y, chunk_rows)  # chunked, or auto's Triton backend: no kernel of its own


class OrderSimilarity(BaseDistance):
    """The order-embedding similarity as a PML distance: ``mat[i, j] = −‖max(0, ref_j − query_i)‖₂``,
    query the images, ref the captions (``is_inverted=True``: larger is closer).

    Args:
        impl: ``"auto"`` (default), ``"dense"`` or ``"chunked"`` (module docstring); ``"triton"`` is a
            ``ValueError``. A loss using this distance computes its terms from the score matrix
            (its own ``impl`` concerns the dot-product similarities).
        chunk_rows: rows per chunk of the chunked formula (None: as many as fit in 2²² numbers).
        **kwargs: PML's ``normalize_embeddings`` (default False here: the original code applies the
            measure to the model's embeddings as they are, l2-normalised and with ``--use_abs`` made
            non-negative by the model), ``power``, ``collect_stats``.

    Usage: ``MaxViolationLoss(distance=OrderSimilarity())(img_emb, cap_emb)``.
    """

    def __init__(self, impl: str = "auto", chunk_rows: int | None = None, **kwargs):
        if not kwargs.pop("is_inverted", True):
            raise ValueError("OrderSimilarity is a similarity (larger is closer): is_inverted must be True")
        kwargs.setdefault("normalize_embeddings", False)
        super().__init__(is_inverted=True, **kwargs)
        self.impl = check_order_impl(impl)
        self.chunk_rows = _check_chunk_rows(chunk_rows)

    def compute_mat(self, query_emb, ref_emb):
        return order_scores(query_emb, query_emb if ref_emb is None else ref_emb, self.impl, self.chunk_rows)

    def pairwise_distance(self, query_emb, ref_emb):
        """The score of each row pair, (N, D) and (N, D) → (N,)."""
        return -torch.linalg.vector_norm((ref_emb - query_emb).clamp_min(0), dim=-1)
