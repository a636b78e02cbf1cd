"""Positive pairs from labels: which (row, column) pairs are positives, and which are negatives.

``(a, p)`` is a positive pair iff ``labels[a] == ref_labels[p]`` (without labels: ``a == p``);
every other pair is a negative, except that a sample is never paired with itself when ``y`` is
``x`` (one modality, ``self_ref``).
"""

from __future__ import annotations

import torch

from .ops.tiling import SameLabel

__all__ = ["resolve_labels", "positive_pairs", "pair_masks"]


def check_paired(B: int, M: int) -> None:
    """The paired form (row a with column a) needs B = M."""
    if B != M:
        raise ValueError(
            f"paired form needs as many captions as images (rows aligned), got {B} and {M}; "
            "pass labels and ref_labels to pair them otherwise"
        )


def resolve_labels(
    labels: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    B: int,
    M: int,
    self_ref: bool,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concrete integer labels for both sides; without labels row a pairs with column a."""
    if labels is None:
        if ref_labels is not None:
            raise ValueError("ref_labels were given without labels; pass labels for the embeddings too")
        if self_ref:
            raise ValueError(
                "one modality without labels has no positive pairs; pass labels, or pass the other "
                "modality as ref_emb (paired form: loss(img_emb, cap_emb))"
            )
        check_paired(B, M)
        idx = torch.arange(B, device=device)
        return idx, idx
    labels = labels.to(device)
    if ref_labels is None:
        if not self_ref and B != M:
            raise ValueError(
                f"ref_labels omitted, so labels are taken for both modalities, but there are {B} "
                f"embeddings and {M} ref_emb rows; pass ref_labels"
            )
        ref_labels = labels
    return labels, ref_labels.to(device)


def positive_pairs(labels: torch.Tensor, ref_labels: torch.Tensor, self_ref: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All positive pairs ``(a, p)``, ``labels[a] == ref_labels[p]``, in row-major order.

    Enumerated through a sort of ``ref_labels``: O((B + M) log M + #pairs), nothing B×M.
    With ``self_ref`` the pairs ``(a, a)`` are left out.
    """
    a, p = SameLabel(ref_labels).entries(labels)
    if self_ref:
        keep = a != p
        a, p = a[keep], p[keep]
    return a, p  # rows ascend, and within a row the stable sort keeps the columns ascending


def pair_masks(labels: torch.Tensor, ref_labels: torch.Tensor, self_ref: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (B, M) boolean masks of positive and negative pairs (dense implementation only)."""
    pos = labels[:, None] == ref_labels[None, :]
    if self_ref:
        eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        return pos & ~eye, ~pos & ~eye
    return pos, ~pos
