"""Ties: the hardest negative is the lowest index among the tied maxima, in both directions and in
every implementation.

The inputs are small integers, so every score is an exact integer in float32 whatever order a
BLAS, a tile or the interpreter sums in: the ties are exact by construction, not by the luck of
one machine's blocking. The winner is observed through the gradient, which MH sends to the
chosen negative only; the reference picks it by an explicit loop over float64 scores.
"""

import pytest
import torch

from vse_losses import functional as VF
from vse_losses.ops import triton_available

IMPLS = ["dense", "chunked"] + (["triton"] if triton_available() else [])
MARGIN = 0.5


def tied_inputs(B, M, D, n_distinct, seed):
    """Rows drawn from a few distinct integer vectors: many exactly equal scores."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-2, 3, (n_distinct, D), generator=g).float()
    x = base[torch.randint(0, n_distinct, (B,), generator=g)]
    y = base[torch.randint(0, n_distinct, (M,), generator=g)]
    return x, y


def reference_grads(x, y, labels, ref_labels):
    """∂/∂x, ∂/∂y of the summed MH loss (dot similarity) by explicit loops; each term's gradient
    goes to the lowest-index negative among those with the largest score."""
    x, y = x.double(), y.double()
    B, M = x.shape[0], y.shape[0]
    S = x @ y.t()
    gx, gy = torch.zeros_like(x), torch.zeros_like(y)

    def hardest(negs, score):  # the lowest index among those with the largest score
        best = max(score(n) for n in negs)
        return min(n for n in negs if score(n) == best)

    for a in range(B):
        for p in range(M):
            if labels[a] != ref_labels[p]:
                continue
            # i2t: negatives n of row a (columns)
            negs = [n for n in range(M) if labels[a] != ref_labels[n]]
            n = hardest(negs, lambda n, a=a: S[a, n].item()) if negs else None
            if n is not None and MARGIN - S[a, p] + S[a, n] > 0:
                gx[a] += y[n] - y[p]
                gy[n] += x[a]
                gy[p] -= x[a]
            # t2i: negatives n of column p (rows)
            negs = [n for n in range(B) if labels[n] != ref_labels[p]]
            n = hardest(negs, lambda n, p=p: S[n, p].item()) if negs else None
            if n is not None and MARGIN - S[a, p] + S[n, p] > 0:
                gy[p] += x[n] - x[a]
                gx[n] += y[p]
                gx[a] -= y[p]
    return gx, gy


def mh_grads(x0, y0, labels, ref_labels, impl):
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    loss = VF.max_violation_loss(
        x, y, labels=labels, ref_labels=ref_labels, margin=MARGIN, reduction="sum", similarity="dot", impl=impl
    )
    loss.backward()
    return x.grad, y.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("B,M,D,seed", [(45, 45, 16, 1), (37, 50, 8, 2), (130, 130, 8, 3)])
def test_mh_ties_go_to_the_lowest_index(impl, labelled, B, M, D, seed):
    if impl == "triton" and B > 64:
        pytest.skip("interpreted triton: small sizes")
    if not labelled and B != M:
        pytest.skip("the paired form needs B = M")
    x, y = tied_inputs(B, M, D, n_distinct=4, seed=seed)
    if labelled:
        g = torch.Generator().manual_seed(seed + 100)
        labels = torch.randint(0, 9, (B,), generator=g)
        ref_labels = torch.randint(0, 9, (M,), generator=g)
    else:
        labels = ref_labels = None
    lab = torch.arange(B) if labels is None else labels
    ref = torch.arange(M) if ref_labels is None else ref_labels
    ex, ey = reference_grads(x, y, lab.tolist(), ref.tolist())
    gx, gy = mh_grads(x, y, labels, ref_labels, impl)
    # integer scores and margin 0.5: every hinge and gradient entry is exact in float32
    assert torch.equal(gx.double(), ex), (gx.double() - ex).abs().max()
    assert torch.equal(gy.double(), ey), (gy.double() - ey).abs().max()


def test_the_reference_sees_the_ties():
    # the inputs do tie, and the lowest index is not simply the first column of every row
    x, y = tied_inputs(45, 45, 16, n_distinct=4, seed=1)
    S = x @ y.t()
    off = S - torch.diag(torch.full((45,), float("inf")))
    n_max = (off == off.max(1, keepdim=True).values).sum(1)
    assert (n_max > 1).float().mean() > 0.5
    first = (off == off.max(1, keepdim=True).values).float().argmax(1)
    assert (first > 1).any()
