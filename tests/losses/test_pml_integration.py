"""The losses as pytorch-metric-learning parts: reducers, distances, memory, tuples."""

import pytest
import torch
from pytorch_metric_learning import distances, losses, reducers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

import vse_losses
from tests.support.cases import FAST_IMPLS, LOSS_CASES
from tests.support.reference import cosine, loop_terms, norm_of
from vse_losses import MaxViolationLoss, SumHingeLoss

F64 = dict(dtype=torch.float64)


def make_loss(name, kwargs, **extra):
    return getattr(vse_losses, name)(**{**kwargs, **extra})


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_sum_hinge_equals_pml_triplet_margin_loss_over_all_triplets(impl):
    x, y = torch.randn(10, 6, **F64), torch.randn(10, 6, **F64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4, 4, 5])
    triplet = losses.TripletMarginLoss(
        margin=0.2, distance=distances.CosineSimilarity(), reducer=reducers.SumReducer(), triplets_per_anchor="all"
    )
    # PML takes ref_labels that *are* labels (the same object) as a self-comparison: pass a copy
    ref = labels.clone()
    expected = triplet(x, labels, ref_emb=y, ref_labels=ref) + triplet(y, labels, ref_emb=x, ref_labels=ref)
    got = SumHingeLoss(margin=0.2, reducer=reducers.SumReducer(), impl=impl)(x, labels, ref_emb=y, ref_labels=labels)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    # one modality: PML excludes a == p too
    expected = triplet(x, labels)
    got = SumHingeLoss(margin=0.2, reducer=reducers.SumReducer(), impl=impl, directions="i2t")(x, labels)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_reducers(name, kwargs, norm):
    x, y = torch.randn(6, 4, **F64), torch.randn(6, 4, **F64)
    terms = loop_terms(cosine(x, y), **norm)
    got = make_loss(name, kwargs, reducer=reducers.DoNothingReducer())(x, y)["loss"]["losses"]
    torch.testing.assert_close(got, terms, rtol=1e-8, atol=1e-12)
    got = make_loss(name, kwargs, reducer=reducers.AvgNonZeroReducer())(x, y)
    torch.testing.assert_close(got, terms[terms > 0].mean(), rtol=1e-8, atol=1e-12)
    got = make_loss(name, kwargs)(x, y)  # MeanReducer by default
    torch.testing.assert_close(got, terms.mean(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_other_distances_fall_back_to_dense(name, kwargs, norm):
    x, y = torch.randn(6, 4, **F64), torch.randn(6, 4, **F64)
    # a distance (smaller = closer) is used as the similarity −d
    d = torch.cdist(x, y)
    expected = loop_terms(-d, margin=0.5, **norm).sum()
    loss_fn = make_loss(
        name,
        kwargs,
        margin=0.5,
        distance=distances.LpDistance(normalize_embeddings=False),
        reducer=reducers.SumReducer(),
        impl="chunked",
    )
    torch.testing.assert_close(loss_fn(x, y), expected, rtol=1e-8, atol=1e-10)
    # an unnormalised dot product
    expected = loop_terms(x @ y.t(), **norm).sum()
    loss_fn = make_loss(
        name, kwargs, distance=distances.DotProductSimilarity(normalize_embeddings=False), reducer=reducers.SumReducer()
    )
    torch.testing.assert_close(loss_fn(x, y), expected, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_pair_indices_tuple_restricts_pairs(name, kwargs, norm):
    x, y = torch.randn(6, 4, **F64), torch.randn(6, 4, **F64)
    labels = torch.tensor([0, 1, 1, 2, 3, 4])
    full = make_loss(name, kwargs, reducer=reducers.SumReducer())(x, labels, ref_emb=y)
    pairs = lmu.get_all_pairs_indices(labels, labels.clone())  # a copy: not a self-comparison
    got = make_loss(name, kwargs, reducer=reducers.SumReducer())(x, labels, pairs, ref_emb=y)
    torch.testing.assert_close(got, full, rtol=1e-8, atol=1e-12)
    # dropping the negative pairs of row 0 removes them from row 0's i2t term and column terms
    a1, p, a2, n = pairs
    keep = a2 != 0
    S = cosine(x, y)
    neg = torch.zeros(6, 6, dtype=torch.bool)
    neg[a2[keep], n[keep]] = True
    pos = labels[:, None] == labels[None, :]
    expected = 0
    for a, pp in pos.nonzero().tolist():  # raw violations: norm_of hinges them for the hinge norms
        h_row = [0.2 - S[a, pp] + S[a, j] for j in range(6) if neg[a, j]]
        h_col = [0.2 - S[a, pp] + S[i, pp] for i in range(6) if neg[i, pp]]
        expected = expected + norm_of(h_row, **norm) + norm_of(h_col, **norm)
    got = make_loss(name, kwargs, reducer=reducers.SumReducer())(x, labels, (a1, p, a2[keep], n[keep]), ref_emb=y)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


def test_triplet_indices_tuple_gives_one_term_per_anchor_positive_pair():
    x, y = torch.randn(5, 4, **F64), torch.randn(5, 4, **F64)
    triplets = (torch.tensor([0, 0, 0, 2, 2]), torch.tensor([0, 0, 1, 2, 2]), torch.tensor([1, 3, 4, 0, 1]))
    S = cosine(x, y)
    h = torch.clamp(0.2 - S[triplets[0], triplets[1]] + S[triplets[0], triplets[2]], min=0)
    got = vse_losses.MaxViolationLoss(reducer=reducers.DoNothingReducer())(x, None, triplets, ref_emb=y)["loss"][
        "losses"
    ]
    expected = torch.stack([h[:2].max(), h[2:3].max(), h[3:].max()])
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    got = vse_losses.SumHingeLoss(reducer=reducers.SumReducer())(x, None, triplets, ref_emb=y)
    torch.testing.assert_close(got, h.sum(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name,kwargs,norm", LOSS_CASES)
def test_cross_batch_memory(name, kwargs, norm):
    emb_size, mem = 4, 12
    loss_fn = make_loss(name, kwargs, reducer=reducers.SumReducer())
    wrapper = losses.CrossBatchMemory(loss_fn, emb_size, memory_size=mem)
    seen_x, seen_l = [], []
    for step in range(4):
        x = torch.randn(5, emb_size, **F64)
        labels = torch.randint(0, 4, (5,))
        wrapper.embedding_memory = wrapper.embedding_memory.double()
        got = wrapper(x, labels)
        seen_x.append(x)
        seen_l.append(labels)
        memory = torch.cat(seen_x)[-mem:]
        memory_labels = torch.cat(seen_l)[-mem:]
        # reference: the batch against the memory, without each item's comparison with its own slot
        order = torch.arange(len(torch.cat(seen_x)))[-mem:] % mem
        inv = torch.empty_like(order)
        inv[order] = torch.arange(len(order))
        mem_x, mem_l = memory[inv], memory_labels[inv]
        own = (torch.arange(step * 5, step * 5 + 5)) % mem
        S = cosine(x, mem_x)
        expected = 0
        for a in range(5):
            for p in range(len(mem_x)):
                if labels[a] != mem_l[p] or p == own[a]:
                    continue
                h_row = [0.2 - S[a, p] + S[a, j] for j in range(len(mem_x)) if mem_l[j] != labels[a] and j != own[a]]
                h_col = [0.2 - S[a, p] + S[i, p] for i in range(5) if labels[i] != mem_l[p] and p != own[i]]
                expected = expected + norm_of(h_row, **norm) + norm_of(h_col, **norm)
        torch.testing.assert_close(got, torch.as_tensor(expected, **F64), rtol=1e-8, atol=1e-12)


def test_collect_stats_diagnostics():
    x = torch.randn(8, 4, **F64)
    x[1] = x[0] + 0.01 * torch.randn(4, **F64)
    y = x + 0.01 * torch.randn(8, 4, **F64)
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])  # row 1 duplicates row 0's image
    loss_fn = MaxViolationLoss(collect_stats=True)
    loss_fn(x, labels, ref_emb=y)
    S = cosine(x, y)
    pos = labels[:, None] == labels[None, :]
    assert loss_fn.pos_sim_mean == pytest.approx(S[pos].mean().item(), rel=1e-6)
    masked = S.masked_fill(pos, float("-inf"))
    hardest = torch.cat([masked.amax(1), masked.amax(0)]).mean().item()
    assert loss_fn.hardest_neg_sim_mean == pytest.approx(hardest, rel=1e-6)
    # rows/cols 0 and 1 are near-copies: the label-unaware hardest negative is the duplicate
    off = S.masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
    dup = torch.cat([labels == labels[off.argmax(1)], labels == labels[off.argmax(0)]]).double().mean().item()
    assert dup > 0 and loss_fn.frac_hardest_is_duplicate == pytest.approx(dup)
    terms = loop_terms(S, labels, labels, kind="max")
    assert loss_fn.frac_violating == pytest.approx((terms > 0).double().mean().item())
    # collapse: every term violates, positives and hardest negatives equally similar
    loss_fn(torch.ones(6, 3), torch.ones(6, 3))
    assert loss_fn.frac_violating == 1.0 and loss_fn.pos_sim_mean == pytest.approx(loss_fn.hardest_neg_sim_mean)


def test_hyperparameters_are_recorded():
    assert vse_losses.TopKViolationLoss(k=4).k == 4
    assert vse_losses.LpViolationLoss(p=3).p == 3.0
    loss_fn = MaxViolationLoss(margin=0.3)
    assert loss_fn.margin == 0.3 and "margin" in loss_fn._record_these
