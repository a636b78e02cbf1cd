"""Fast kernels of the losses, each file one kernel with its autograd Function beside it.

Two primitives are enough for every loss (see ``vse_losses.functional``):

- :func:`negative_topk` — the k hardest negatives of every row and every column of ``x yᵀ``
  (no gradient: the loss recomputes the selected scores by a gather);
- :func:`hinge_norm_rows` — ``T_i = (Σ_j [q_i·k_j − t_i]_+^p)^{1/p}`` over the negatives of each
  row, with a backward that recomputes score tiles.

Each exists as ``chunked`` (torch, tiles of rows, any device) and ``triton`` (CUDA, the score tile
fused with the reductions). Neither holds anything B×M.
"""

from __future__ import annotations

import os

import torch

from .hinge_norm import hinge_norm_rows_chunked
from .hinge_norm_pairs import hinge_norm_pairs_chunked
from .negative_topk import negative_topk_chunked
from .tiling import diagonal_pairs

# B·M above which "auto" leaves the dense formula for the chunked one on the CPU: below it the
# dense formula is as fast and its few B×M buffers are small.
AUTO_CHUNKED_MIN_PAIRS = 512 * 512


def triton_available() -> bool:
    try:
        from . import triton_negative_max  # noqa: F401
    except Exception:  # a broken triton install
        return False
    return getattr(triton_negative_max, "TRITON_AVAILABLE", False)


def _triton_usable(x: torch.Tensor) -> bool:
    on_device = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and triton_available()


def resolve_impl(impl: str, x: torch.Tensor, n_pairs: int) -> str:
    """``auto``: triton on CUDA (fp32/fp16/bf16, triton >= 3.3 installed), chunked when B·M is large,
    dense otherwise. An explicit ``triton`` that cannot run raises ``ValueError``."""
    if impl == "auto":
        if x.is_cuda and _triton_usable(x):
            return "triton"
        return "chunked" if n_pairs >= AUTO_CHUNKED_MIN_PAIRS else "dense"
    if impl == "triton" and not _triton_usable(x):
        from .triton_negative_max import triton_requirement

        raise ValueError(
            f"impl='triton' needs {triton_requirement()} and a CUDA tensor of "
            f"float32/float16/bfloat16 (got {x.device}, {x.dtype}); use impl='chunked' on the CPU, or set "
            "TRITON_INTERPRET=1 before importing to test"
        )
    return impl


def negative_topk(x, y, x_labels, y_labels, self_ref: bool, k: int, impl: str = "chunked", paired: bool = False,
                  scales=None):
    """The k largest negative scores of each row and each column of ``x yᵀ``, in float32.

    x: (B, D), y: (M, D); x_labels (B,), y_labels (M,) integers; (i, j) is a negative iff
    ``x_labels[i] != y_labels[j]`` and, with ``self_ref``, ``i != j``.
    Returns ``row_val (B, k), row_idx (B, k), col_val (M, k), col_idx (M, k)``, values in
    descending order, ``-inf`` (index 0) where a row has fewer than k negatives; ties go to the
    lowest index. ``paired``: the labels are ``arange(B)`` on both sides (B = M), which spares the
    chunked kernel the search for same-label entries. ``scales``: ``(c_x (B,), c_y (M,))`` float32, the
    scores are then ``c_i c_j x_i·y_j`` (cosine similarity of raw embeddings, with c = 1/‖·‖).
    """
    if impl == "triton" and k == 1:
        from .triton_negative_max import negative_max_triton

        rv, ri, cv, ci = negative_max_triton(x, y, x_labels, y_labels, self_ref, scales=scales)
        return rv[:, None], ri[:, None], cv[:, None], ci[:, None]
    return negative_topk_chunked(x, y, x_labels, y_labels, self_ref, k, paired=paired, scales=scales)


def hinge_norm_rows(q, keys, t, q_labels, k_labels, q_self, p: float, impl: str = "chunked"):
    """``T_i = (Σ_j h_ij^p)^{1/p}``, ``h_ij = [q_i·k_j − t_i]_+`` over the negatives j of row i.

    q: (N, D), keys: (M, D), t: (N,); j is a negative of row i iff ``q_labels[i] != k_labels[j]``
    and ``j != q_self[i]`` (``-1``: none excluded). Differentiable in q, keys and t. → (N,) float32.
    """
    if impl == "triton":
        from .triton_hinge_norm import hinge_norm_rows_triton

        return hinge_norm_rows_triton(q, keys, t, q_labels, k_labels, q_self, p)
    return hinge_norm_rows_chunked(q, keys, t, q_labels, k_labels, q_self, p)


def hinge_norm_pairs(x, y, t, a, p_idx, labels, ref_labels, self_ref: bool, p: float,
                     do_i2t: bool = True, do_t2i: bool = True, impl: str = "chunked", paired: bool = False):
    """Both directions' ℓp hinge norms of every positive pair ``(a_j, p_j)``, threshold ``t_j``.

    ``T¹_j`` over the negatives n of row a_j of ``[x_{a_j}·y_n − t_j]_+``, ``T²_j`` over the
    negatives n of column p_j of ``[x_n·y_{p_j} − t_j]_+`` (negatives as in :func:`negative_topk`).
    Differentiable in x, y and t. Returns ``(T¹, T²)``, each (P,) float32 (zeros for a direction
    not asked for). ``chunked`` makes one pass over row tiles for both directions; ``triton``
    computes both directions' gradients in one backward where pair j is (j, j) (the usual
    paired batch), and runs :func:`hinge_norm_rows` once per direction otherwise. ``paired``: the
    labels are ``arange(B)`` and the pairs (j, j), known without looking at them.
    """
    if impl != "triton":
        return hinge_norm_pairs_chunked(x, y, t, a, p_idx, labels, ref_labels, self_ref, p, do_i2t, do_t2i, paired)
    if diagonal_pairs(a, p_idx, x.shape[0], y.shape[0], paired):
        from .triton_hinge_norm_pairs import hinge_norm_pairs_triton

        return hinge_norm_pairs_triton(x, y, t, labels, ref_labels, self_ref, p, do_i2t, do_t2i)
    none = torch.full_like(a, -1)
    T1 = T2 = torch.zeros_like(t, dtype=torch.promote_types(t.dtype, torch.float32))
    if do_i2t:
        T1 = hinge_norm_rows(x[a], y, t, labels[a], ref_labels, a if self_ref else none, p, impl=impl)
    if do_t2i:
        T2 = hinge_norm_rows(y[p_idx], x, t, ref_labels[p_idx], labels, p_idx if self_ref else none, p, impl=impl)
    return T1, T2
