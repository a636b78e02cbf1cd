"""Training diagnostics recorded by the losses when ``collect_stats=True`` (PML's convention).

- ``frac_violating``: fraction of loss terms > 0. Near 1 with every term ≈ margin is the
  collapse plateau: all embeddings at one point, MH = margin per term (2·margin per pair summed).
- ``pos_sim_mean``: mean similarity of the positive pairs.
- ``hardest_neg_sim_mean``: mean over rows and columns of the hardest negative's similarity.
  Collapse shows as ``pos_sim_mean ≈ hardest_neg_sim_mean ≈ 1``.
- ``frac_hardest_is_duplicate``: how often the hardest off-diagonal item, as the original VSE++
  code picks it (label-unaware), had the query's label, i.e. was a positive that this library
  excludes. NaN without labels or when B ≠ M.
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
) -> Dict[str, float]:
    """The four diagnostics above for dot-product embeddings x (B, D), y (M, D) and the terms."""
    from .functional import positive_pairs, resolve_labels

    B, M = x.shape[0], y.shape[0]
    lab, ref_lab = resolve_labels(labels, ref_labels, B, M, self_ref, x.device)
    a, p = positive_pairs(lab, ref_lab, self_ref)
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
    }
