"""Ties: the hardest negative is the lowest index among the tied maxima (the k hardest: the lowest
indices among those tied at the k-th score), in both directions and in every implementation.

The inputs are small integers, so every score is an exact integer in float32 whatever order a
BLAS, a tile or the interpreter sums in: the ties are exact by construction, not by the luck of
one machine's blocking. The winner is observed through the gradient, which MH (top-k) sends to the
chosen negatives only; the reference picks them by an explicit loop over float64 scores.
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


def reference_grads(x, y, labels, ref_labels, k=1):
    """∂/∂x, ∂/∂y of the summed MH (k = 1) or top-k loss (dot similarity) by explicit loops; each
    term's gradient goes to its k hardest negatives, by score descending, then index ascending."""
    x, y = x.double(), y.double()
    B, M = x.shape[0], y.shape[0]
    S = x @ y.t()
    gx, gy = torch.zeros_like(x), torch.zeros_like(y)

    def hardest(negs, score):  # the k largest scores, the lowest indices first among equal ones
        return sorted(negs, key=lambda n: (-score(n), n))[:k]

    for a in range(B):
        for p in range(M):
            if labels[a] != ref_labels[p]:
                continue
            # i2t: negatives n of row a (columns)
            negs = [n for n in range(M) if labels[a] != ref_labels[n]]
            for n in hardest(negs, lambda n, a=a: S[a, n].item()):
                if MARGIN - S[a, p] + S[a, n] > 0:
                    gx[a] += y[n] - y[p]
                    gy[n] += x[a]
                    gy[p] -= x[a]
            # t2i: negatives n of column p (rows)
            negs = [n for n in range(B) if labels[n] != ref_labels[p]]
            for n in hardest(negs, lambda n, p=p: S[n, p].item()):
                if MARGIN - S[a, p] + S[n, p] > 0:
                    gy[p] += x[n] - x[a]
                    gx[n] += y[p]
                    gx[a] -= y[p]
    return gx, gy


def mh_grads(x0, y0, labels, ref_labels, impl, k=1):
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    kwargs = dict(labels=labels, ref_labels=ref_labels, margin=MARGIN, reduction="sum", similarity="dot", impl=impl)
    loss = VF.max_violation_loss(x, y, **kwargs) if k == 1 else VF.top_k_violation_loss(x, y, k=k, **kwargs)
    loss.backward()
    return x.grad, y.grad


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("B,M,D,seed", [(45, 45, 16, 1), (37, 50, 8, 2), (130, 130, 8, 3)])
def test_ties_go_to_the_lowest_index(k, impl, labelled, B, M, D, seed):
    if impl == "triton" and (B > 64 or k > 1):
        pytest.skip("interpreted triton: small sizes; k > 1 is the chunked search's")
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
    ex, ey = reference_grads(x, y, lab.tolist(), ref.tolist(), k)
    gx, gy = mh_grads(x, y, labels, ref_labels, impl, k)
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


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("k", [2, 3, 7])
def test_topk_lowest_against_a_sort_by_value_then_index(dim, k):
    from vse_losses.ops.topk import topk_lowest

    g = torch.Generator().manual_seed(k)
    v = torch.randint(-3, 3, (9, 11), generator=g).float()
    v[v == -3] = float("-inf")  # masked entries tie too
    order = torch.randperm(v.shape[dim], generator=g)  # indices other than the positions (a merge)
    index = order.view(-1, 1).expand_as(v) if dim == 0 else order.view(1, -1).expand_as(v)
    for idx_arg in (None, index):
        vals, idx = topk_lowest(v, k, dim=dim, index=idx_arg)
        for line in range(v.shape[1 - dim]):
            row = v[:, line] if dim == 0 else v[line]
            ids = list(range(len(row))) if idx_arg is None else order.tolist()
            best = sorted(range(len(row)), key=lambda j: (-row[j].item(), ids[j]))[:k]
            got_v = vals[:, line] if dim == 0 else vals[line]
            got_i = idx[:, line] if dim == 0 else idx[line]
            assert got_v.tolist() == [row[j].item() for j in best]
            assert sorted(got_i.tolist()) == sorted(ids[j] for j in best)
