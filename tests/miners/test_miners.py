"""The cross-modal miners feeding PML's own losses: the same values as this library's losses."""

import pytest
import torch
from pytorch_metric_learning import distances, losses, reducers

import vse_losses
from tests.support.cases import FAST_IMPLS
from vse_losses import HardestNegativeMiner, MaxViolationLoss, SumHingeLoss, TopKNegativeMiner

F64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_hardest_miner_feeding_pml_triplet_loss_is_max_violation(impl):
    x, y = torch.randn(9, 5, **F64), torch.randn(9, 5, **F64)
    labels = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6])
    miner = HardestNegativeMiner(impl=impl)
    triplet = losses.TripletMarginLoss(margin=0.2, distance=distances.CosineSimilarity(), reducer=reducers.SumReducer())
    i2t = triplet(x, labels, miner(x, labels, y, labels), ref_emb=y, ref_labels=labels)
    t2i = triplet(y, labels, miner(y, labels, x, labels), ref_emb=x, ref_labels=labels)
    expected = MaxViolationLoss(reducer=reducers.SumReducer())(x, labels, ref_emb=y, ref_labels=labels)
    torch.testing.assert_close(i2t + t2i, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_topk_miner_with_sum_hinge_is_top_k_loss(impl):
    x, y = torch.randn(9, 5, **F64), torch.randn(9, 5, **F64)
    miner = TopKNegativeMiner(k=3, impl=impl)
    triplets = miner(x, None, y)
    assert len(triplets[0]) == 9 * 3
    a, p, n = triplets
    assert torch.equal(a, p) and not (a == n).any()
    mined = SumHingeLoss(reducer=reducers.SumReducer(), directions="i2t")(x, None, triplets, ref_emb=y)
    expected = vse_losses.TopKViolationLoss(k=3, reducer=reducers.SumReducer(), directions="i2t")(x, y)
    torch.testing.assert_close(mined, expected, rtol=1e-8, atol=1e-12)
    # the same miner through a non-dot distance finds the same negatives on normalised inputs
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    lp_miner = TopKNegativeMiner(k=3, distance=distances.LpDistance())
    assert set(zip(*(t.tolist() for t in lp_miner(xn, None, yn)))) == set(zip(*(t.tolist() for t in triplets)))
