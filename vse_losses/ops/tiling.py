"""How many query rows one tile of the chunked kernels holds."""

from __future__ import annotations

import torch

# elements of one (rows × M) float32 score tile: 16 MiB. The chunked kernels keep a few such
# buffers alive, so their extra memory is O(TILE_ELEMENTS), whatever B and M are.
TILE_ELEMENTS = 1 << 22
MIN_TILE_ROWS = 64


def tile_rows(n_rows: int, n_cols: int) -> int:
    """Rows per tile: as many as fit TILE_ELEMENTS, at least MIN_TILE_ROWS, at most n_rows."""
    return max(1, min(n_rows, max(MIN_TILE_ROWS, TILE_ELEMENTS // max(n_cols, 1))))


def negative_mask(
    q_labels: torch.Tensor, k_labels: torch.Tensor, q_self: torch.Tensor | None
) -> torch.Tensor:
    """(rows, M) bool: ``q_labels[i] != k_labels[j]`` and ``j != q_self[i]`` (q_self −1: none)."""
    neg = q_labels[:, None] != k_labels[None, :]
    if q_self is not None:
        cols = torch.arange(k_labels.shape[0], device=k_labels.device)
        neg &= cols[None, :] != q_self[:, None]
    return neg
