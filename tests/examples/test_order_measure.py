"""train_coco.py / evaluate.py with --measure order: every --loss through vse_losses.OrderSimilarity,
the ranks by the order score against a naive loop, and the options that cannot work."""

import json
import math
import os

import numpy as np
import pytest
import torch
from vse import evaluation, options, training
from vse.evaluate_cli import main as evaluate_main
from vse.training import main

import vse_losses

from .helpers import TINY, make_precomp


def _order_loop(im, cap):
    """S[i, j] = −sqrt(Σ_d max(0, cap[j, d] − im[i, d])²), element by element."""
    S = np.zeros((im.shape[0], cap.shape[0]))
    for i in range(im.shape[0]):
        for j in range(cap.shape[0]):
            S[i, j] = -math.sqrt(sum(max(0.0, float(c) - float(m)) ** 2 for c, m in zip(cap[j], im[i])))
    return S


def test_order_ranks_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    im = torch.rand(9, 4, generator=g).numpy()
    cap = (torch.rand(45, 4, generator=g) * 0.9).numpy()
    S = _order_loop(im, cap)
    n = S.shape[0]
    # ties count against the query, as for the cosine (tests/examples/test_evaluation.py)
    ref_i2t = [
        sum(1 for j in range(5 * n) if j // 5 != i and S[i, j] >= S[i, 5 * i : 5 * i + 5].max()) for i in range(n)
    ]
    ref_t2i = [sum(1 for k in range(n) if k != j // 5 and S[k, j] >= S[j // 5, j]) for j in range(5 * n)]
    i2t, t2i = evaluation.ranks(im, cap, chunk=4, measure="order")
    assert i2t.tolist() == ref_i2t and t2i.tolist() == ref_t2i
    assert evaluation.ranks(im, cap, measure="order")[0].tolist() == ref_i2t  # one chunk
    assert evaluation.ranks(im, cap)[0].tolist() != ref_i2t  # the measure is used: the cosine ranks differ


@pytest.mark.parametrize(
    "extra", [["--loss", loss] for loss in options.LOSSES] + [["--warmup_steps", "10"], ["--max_violation"]]
)
def test_every_loss_takes_the_order_similarity(extra):
    opt, explicit = options.parse(["--measure", "order", "--use_abs", "--impl", "chunked", *extra])
    opt = options.finalize(opt, explicit, log=lambda m: None)
    loss_fn, _ = training.build_loss(opt)
    assert isinstance(loss_fn.distance, vse_losses.OrderSimilarity) and loss_fn.distance.impl == "chunked"
    x = torch.rand(6, 5, requires_grad=True)
    y = torch.rand(6, 5, requires_grad=True)
    ids = torch.tensor([0, 1, 1, 2, 3, 4])
    loss = loss_fn(x, ids, ref_emb=y, ref_labels=ids)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_train_and_evaluate_with_order(tmp_path, capsys, monkeypatch):
    make_precomp(str(tmp_path))
    run = str(tmp_path / "run")
    argv = TINY + ["--data_path", str(tmp_path), "--data_name", "toy_precomp", "--logger_name", run]
    measures = []
    scores = evaluation.scores
    monkeypatch.setattr(
        evaluation, "scores", lambda im, cap, measure="cosine": measures.append(measure) or scores(im, cap, measure)
    )
    assert main(argv + ["--max_violation", "--measure", "order", "--use_abs"]) == 0
    out = capsys.readouterr().out
    assert "measure order (--use_abs)" in out and "notice: --measure order" not in out
    assert measures and set(measures) == {"order"}  # validation and test ranked by the order score
    ckpt = torch.load(os.path.join(run, "model_best.pth.tar"), weights_only=True)
    assert ckpt["opt"]["measure"] == "order"
    test_m = json.load(open(os.path.join(run, "test_metrics.json")))
    # evaluate.py reads the measure from the checkpoint and reproduces the test figures
    measures.clear()
    assert evaluate_main([os.path.join(run, "model_best.pth.tar"), "--out", str(tmp_path / "m.json")]) == 0
    assert json.load(open(tmp_path / "m.json")) == pytest.approx(test_m)
    assert measures and set(measures) == {"order"}


def test_order_options(tmp_path, capsys):
    make_precomp(str(tmp_path))
    argv = TINY + ["--data_path", str(tmp_path), "--data_name", "toy_precomp", "--logger_name", str(tmp_path / "r")]
    assert main(argv + ["--measure", "order", "--impl", "triton"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --impl: triton has no kernel for --measure order; use auto, dense or chunked"]
    assert main(argv + ["--measure", "order", "--num_epochs", "0"]) == 0
    assert "notice: --measure order without --use_abs" in capsys.readouterr().out
