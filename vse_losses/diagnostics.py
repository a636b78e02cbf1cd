"""Training diagnostics recorded by the losses when ``collect_stats=True`` (PML's convention).

- ``frac_violating``: fraction of loss terms > 0. Near 1 with every term ≈ margin is the
  collapse plateau: all embeddings at one point, MH = margin per term (2·margin per pair summed).
- ``pos_sim_mean``: mean similarity of the positive pairs.
- ``hardest_neg_sim_mean``: mean over rows and columns of the hardest negative's similarity.
  Collapse shows as ``pos_sim_mean ≈ hardest_neg_sim_mean ≈ 1``.
- ``frac_hardest_is_duplicate``: how often the hardest off-diagonal item, as the original VSE++
  code picks it (label-unaware), had the query's label, i.e. was a positive that this library
  excludes. NaN without labels or when B ≠ M.
- ``num_anchors_without_positive``: how many queries had no positive and so gave no term (rows
  of ``embeddings`` for i2t, rows of ``ref_emb`` for t2i, in the directions computed). A batch
  where every query is such gives the loss 0 with zero gradients.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .ops import negative_topk


@torch.no_grad()
def violation_stats(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: Optional[torch.Tensor],
    ref_labels: Optional[torch.Tensor],
    self_ref: bool,
    terms: torch.Tensor,
    directions: str = "both",
) -> Dict[str, float]:
    """The diagnostics above for dot-product embeddings x (B, D), y (M, D) and the terms."""
    from .functional import positive_pairs, resolve_labels

    B, M = x.shape[0], y.shape[0]
    lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    a, p = positive_pairs(lab, ref_lab, self_ref)
    has_pos = (torch.zeros(B, dtype=torch.bool, device=x.device).index_fill(0, a, True),
               torch.zeros(M, dtype=torch.bool, device=x.device).index_fill(0, p, True))
    wide = torch.promote_types(x.dtype, torch.float32)
    pos = (x[a].to(wide) * y[p].to(wide)).sum(-1)
    rv, _, cv, _ = negative_topk(x, y, lab, ref_lab, self_ref, 1)
    hardest = torch.cat([rv[:, 0], cv[:, 0]])
    hardest = hardest[torch.isfinite(hardest)]
    dup = float("nan")
    if labels is not None and B == M:
        # the original code's negatives: every off-diagonal entry
        idx = torch.arange(B, device=x.device)
        _, ri, _, ci = negative_topk(x, y, idx, idx, False, 1)
        dup = torch.cat([lab == ref_lab[ri[:, 0]], ref_lab == lab[ci[:, 0]]]).float().mean().item()
    return {
        "frac_violating": (terms > 0).float().mean().item() if terms.numel() else 0.0,
        "pos_sim_mean": pos.mean().item() if pos.numel() else float("nan"),
        "hardest_neg_sim_mean": hardest.mean().item() if hardest.numel() else float("nan"),
        "frac_hardest_is_duplicate": dup,
        "num_anchors_without_positive": _count_without_positive(*has_pos, directions),
    }


def anchors_without_positive(pos: torch.Tensor, directions: str = "both") -> int:
    """``num_anchors_without_positive`` from a dense (B, M) boolean mask of the positive pairs."""
    return _count_without_positive(pos.any(1), pos.any(0), directions)


def _count_without_positive(row_has: torch.Tensor, col_has: torch.Tensor, directions: str) -> int:
    n = 0
    if directions in ("both", "i2t"):
        n += int((~row_has).sum().item())
    if directions in ("both", "t2i"):
        n += int((~col_has).sum().item())
    return n
