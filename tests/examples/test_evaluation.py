"""The retrieval metrics against ranks computed by hand and by a naive loop."""

import numpy as np
import pytest
import torch
from vse import evaluation as E


def _encode(S):
    """Embeddings whose image·caption scores are exactly the N×5N matrix ``S``."""
    S = np.asarray(S, dtype=np.float32)
    return np.eye(S.shape[0], dtype=np.float32), S.T.copy()


def _hand_matrix():
    S = np.zeros((3, 15))
    S[0, 0:5] = [0.5, 0.9, 0.1, 0.2, 0.3]
    S[0, 7], S[0, 12] = 0.95, 0.99  # two negatives above image 0's best caption (0.9): rank 2
    S[1, 5:10] = [0.8, 0.1, 0.1, 0.1, 0.1]
    S[1, 0] = 0.2  # below 0.8: rank 0
    S[2, 10:15] = [0.7, 0.6, 0.6, 0.6, 0.6]
    S[2, 0:5] = 0.75  # five negatives above 0.7: rank 5
    return S


def test_ranks_by_hand():
    i2t, t2i = E.ranks(*_encode(_hand_matrix()))
    assert i2t.tolist() == [2, 0, 5]
    # caption j: images other than its own scoring >= its own image's score
    assert t2i.tolist() == [1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]


def test_metrics_by_hand():
    m = E.metrics(*_encode(_hand_matrix()))
    assert list(m) == list(E.KEYS)
    assert m["i2t_r1"] == pytest.approx(100 / 3)
    assert m["i2t_r5"] == pytest.approx(200 / 3)
    assert m["i2t_r10"] == pytest.approx(100)
    assert m["i2t_medr"] == 3  # floor(median([2, 0, 5])) + 1
    assert m["i2t_meanr"] == pytest.approx(7 / 3 + 1)
    assert m["t2i_r1"] == pytest.approx(100 * 9 / 15)  # nine captions at rank 0
    assert m["t2i_r5"] == m["t2i_r10"] == pytest.approx(100)
    assert m["t2i_medr"] == 1
    assert m["t2i_meanr"] == pytest.approx(6 / 15 + 1)  # six captions at rank 1
    assert m["rsum"] == pytest.approx(sum(m[k] for k in E.KEYS if "_r" in k and not k.endswith(("medr", "meanr"))))


def _naive(im, cap):
    S = im @ cap.T
    n = S.shape[0]
    i2t = []
    for i in range(n):
        order = sorted(range(5 * n), key=lambda j: -S[i, j])
        # best rank among own captions, ties resolved against the query
        best = max(S[i, 5 * i : 5 * i + 5])
        i2t.append(sum(1 for j in range(5 * n) if j // 5 != i and S[i, j] >= best))
        assert min(order.index(j) for j in range(5 * i, 5 * i + 5)) <= i2t[-1]
    t2i = [sum(1 for k in range(n) if k != j // 5 and S[k, j] >= S[j // 5, j]) for j in range(5 * n)]
    return np.array(i2t), np.array(t2i)


def test_ranks_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    im = torch.nn.functional.normalize(torch.randn(17, 6, generator=g), dim=1).numpy()
    cap = torch.nn.functional.normalize(torch.randn(85, 6, generator=g), dim=1).numpy()
    i2t, t2i = E.ranks(im, cap, chunk=5)  # several chunks
    ref_i2t, ref_t2i = _naive(im, cap)
    assert i2t.tolist() == ref_i2t.tolist()
    assert t2i.tolist() == ref_t2i.tolist()


def test_ties_count_against_the_query():
    n = 4
    m = E.metrics(np.ones((n, 3), np.float32), np.ones((5 * n, 3), np.float32))  # a collapsed model
    assert m["i2t_r1"] == m["t2i_r1"] == 0.0
    assert m["i2t_medr"] == 5 * (n - 1) + 1 and m["t2i_medr"] == n


def test_perfect_model():
    im = np.eye(6, dtype=np.float32)
    cap = np.repeat(im, 5, axis=0)
    m = E.metrics(im, cap)
    assert m["i2t_r1"] == m["t2i_r1"] == 100.0 and m["rsum"] == 600.0 and m["i2t_medr"] == 1


def test_coco_5fold_and_5k():
    g = torch.Generator().manual_seed(1)
    im = torch.randn(5000, 4, generator=g)
    cap = im.repeat_interleave(5, 0) + 2.0 * torch.randn(25000, 4, generator=g)
    out = E.evaluate_embeddings(im, cap)  # 5000 images: folds by default
    folds = [E.metrics(im[i * 1000 : (i + 1) * 1000], cap[i * 5000 : (i + 1) * 5000]) for i in range(5)]
    for k in E.KEYS:
        assert out[k] == pytest.approx(np.mean([f[k] for f in folds]))
    full = E.metrics(im, cap)
    for k in E.KEYS:
        assert out["5k_" + k] == pytest.approx(full[k])
    assert out["5k_i2t_r1"] < out["i2t_r1"]  # 5K is harder than 1K
    table = E.format_table(out, "test")
    assert "5K" in table and "R@1" in table and "meanr" in table


def test_no_fold_for_1000_images_and_bad_fold_count():
    im, cap = np.random.rand(1000, 3).astype(np.float32), np.random.rand(5000, 3).astype(np.float32)
    assert set(E.evaluate_embeddings(im, cap)) == set(E.KEYS)
    with pytest.raises(ValueError, match="1000 images"):
        E.evaluate_embeddings(im, cap, fold5=True)
    with pytest.raises(ValueError, match="expected 15"):
        E.ranks(np.zeros((3, 2)), np.zeros((14, 2)))


def test_table_columns():
    table = E.format_table(E.metrics(*_encode(_hand_matrix())), "dev")
    header = table.splitlines()[1].split()
    assert header == ["R@1", "R@5", "R@10", "medr", "meanr"]
    assert table.splitlines()[2].split()[0] == "image→text"
