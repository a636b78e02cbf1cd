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

import torch

from .ops import negative_topk
from .pairs import positive_pairs, resolve_labels

STATS = (
    "frac_violating",
    "pos_sim_mean",
    "hardest_neg_sim_mean",
    "frac_hardest_is_duplicate",
    "num_anchors_without_positive",
)


def _stats(terms, pos_scores, hardest, duplicate, row_has_pos, col_has_pos, directions) -> dict[str, float]:
    """The definitions above, from what either path measured: the positive pairs' scores, the
    hardest negatives' scores of every row and column (−inf: none), whether the original code's
    hardest item was a duplicate (None: not defined), and which rows and columns have a positive."""
    hardest = hardest[torch.isfinite(hardest)]
    without = 0
    if directions in ("both", "i2t"):
        without += int((~row_has_pos).sum().item())
    if directions in ("both", "t2i"):
        without += int((~col_has_pos).sum().item())
    return {
        "frac_violating": (terms > 0).float().mean().item() if terms.numel() else 0.0,
        "pos_sim_mean": pos_scores.mean().item() if pos_scores.numel() else float("nan"),
        "hardest_neg_sim_mean": hardest.mean().item() if hardest.numel() else float("nan"),
        "frac_hardest_is_duplicate": float("nan") if duplicate is None else duplicate.float().mean().item(),
        "num_anchors_without_positive": without,
    }


@torch.no_grad()
def violation_stats(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor | None,
    ref_labels: torch.Tensor | None,
    self_ref: bool,
    terms: torch.Tensor,
    directions: str = "both",
) -> dict[str, float]:
    """The diagnostics for dot-product embeddings x (B, D), y (M, D) and the terms, without
    anything B×M (the hardest negatives by the chunked search)."""
    B, M = x.shape[0], y.shape[0]
    lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    a, p = positive_pairs(lab, ref_lab, self_ref)
    wide = torch.promote_types(x.dtype, torch.float32)
    pos = (x[a].to(wide) * y[p].to(wide)).sum(-1)
    rv, _, cv, _ = negative_topk(x, y, lab, ref_lab, self_ref, 1)
    dup = None
    if labels is not None and B == M:
        # the original code's negatives: every off-diagonal entry
        idx = torch.arange(B, device=x.device)
        _, ri, _, ci = negative_topk(x, y, idx, idx, False, 1)
        dup = torch.cat([lab == ref_lab[ri[:, 0]], ref_lab == lab[ci[:, 0]]])
    row_has = torch.zeros(B, dtype=torch.bool, device=x.device).index_fill(0, a, True)
    col_has = torch.zeros(M, dtype=torch.bool, device=x.device).index_fill(0, p, True)
    return _stats(terms, pos, torch.cat([rv[:, 0], cv[:, 0]]), dup, row_has, col_has, directions)


@torch.no_grad()
def score_stats(
    S: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, terms: torch.Tensor, directions: str = "both"
) -> dict[str, float]:
    """The diagnostics from a dense (B, M) score matrix and its pair masks (other PML distances,
    mined tuples); ``frac_hardest_is_duplicate`` is NaN there."""
    masked = S.masked_fill(~neg, float("-inf"))
    hardest = torch.cat([masked.amax(1), masked.amax(0)]) if S.numel() else S.new_zeros(0)
    return _stats(terms, S[pos], hardest, None, pos.any(1), pos.any(0), directions)
