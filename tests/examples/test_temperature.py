"""--loss lse / infonce, --temperature and --learn_temperature (CLIP's learned logit_scale)."""

import argparse
import csv
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F
from vse import options, training
from vse.training import LearnedTemperature, build_loss, main

TAU = re.compile(r"  temperature (\S+)  ")


def _run(argv):
    assert main(argv) == 0


def _csv(run):
    with open(os.path.join(run, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _ckpt(run):
    return torch.load(os.path.join(run, "checkpoint.pth.tar"), weights_only=True)


def _opt(**kw):
    base = dict(loss="infonce", margin=0.0, impl="auto", warmup_steps=0, temperature=0.07, topk_k=2, lp_p=4.0)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("loss,tau,margin", [("lse", 0.05, 0.2), ("infonce", 0.07, 0.0)])
def test_temperature_losses_train_with_their_defaults(tmp_path, synth_args, capsys, loss, tau, margin):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run, "--loss", loss, "--log_step", "4"])
    out = capsys.readouterr().out
    name = {"lse": "LogSumExpViolationLoss", "infonce": "InfoNCELoss"}[loss]
    assert f"{name}), temperature {tau:g}, margin {margin:g}" in out
    assert ("averaged over its terms" in out) == (loss == "infonce")
    assert not TAU.search(out)  # a fixed τ is not repeated on every progress line
    ckpt = _ckpt(run)
    assert ckpt["opt"]["temperature"] == tau and ckpt["opt"]["margin"] == margin and "logit_scale" not in ckpt
    assert float(_csv(run)[0]["temperature"]) == tau


def test_other_losses_have_no_temperature(tmp_path, synth_args):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run, "--loss", "lp"])
    assert _csv(run)[0]["temperature"] == "" and _ckpt(run)["opt"]["temperature"] is None


def test_infonce_is_clips_mean_and_lse_is_summed():
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8, 5)
    ids = torch.arange(8)
    C = F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()
    loss, _ = build_loss(_opt())
    clip = (F.cross_entropy(C / 0.07, ids) + F.cross_entropy(C.t() / 0.07, ids)) / 2
    assert loss(x, ids, ref_emb=y, ref_labels=ids).item() == pytest.approx(clip.item(), rel=1e-5)
    lse, _ = build_loss(_opt(loss="lse", margin=0.2, temperature=0.05))
    total = 0.0
    for M in (C, C.t()):  # i2t rows, then t2i columns: τ·log(1 + Σ_n exp((α − s_p + s_n)/τ)), summed
        v = (0.2 - M.diag()[:, None] + M).masked_fill(torch.eye(8, dtype=torch.bool), -math.inf) / 0.05
        total += (0.05 * torch.logsumexp(torch.cat([torch.zeros(8, 1), v], 1), 1)).sum().item()
    assert lse(x, ids, ref_emb=y, ref_labels=ids).item() == pytest.approx(total, rel=1e-5)


def test_learned_temperature_moves_and_is_recorded(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    _run(
        synth_args
        + [
            "--logger_name",
            run,
            "--loss",
            "infonce",
            "--learn_temperature",
            "--log_step",
            "5",
            "--learning_rate",
            "0.01",
            "--num_epochs",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "temperature learned (logit_scale = log(1/τ) from τ = 0.07, 1/τ ≤ 100)" in out
    shown = [float(v) for v in TAU.findall(out)]
    assert len(shown) == 8  # every progress line: 2 epochs × 20 iterations, one line in 5
    ckpt = _ckpt(run)
    logit_scale = ckpt["logit_scale"]
    assert logit_scale.ndim == 0 and logit_scale.item() != pytest.approx(math.log(1 / 0.07), abs=1e-3)  # it moved
    tau = math.exp(-logit_scale.item())
    assert shown[-1] == pytest.approx(tau, abs=1e-4)
    rows = _csv(run)
    assert float(rows[-1]["temperature"]) == pytest.approx(tau, rel=1e-5)
    assert float(rows[0]["temperature"]) != float(rows[1]["temperature"])
    # Adam trains it: its state is the optimiser's second parameter group
    assert len(ckpt["optimizer"]["param_groups"]) == 2 and ckpt["optimizer"]["param_groups"][1]["params"]
    assert ckpt["opt"]["learn_temperature"] is True and ckpt["opt"]["temperature"] == 0.07  # the initial value


def test_learned_temperature_gets_the_exact_gradient():
    t = LearnedTemperature(0.07)
    loss, _ = build_loss(_opt())
    torch.manual_seed(0)
    x, y, ids = torch.randn(6, 4), torch.randn(6, 4), torch.arange(6)
    loss.temperature = t.temperature()
    loss(x, ids, ref_emb=y, ref_labels=ids).backward()
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    S = F.normalize(x, dim=1) @ F.normalize(y, dim=1).t() * scale.exp()
    ((F.cross_entropy(S, ids) + F.cross_entropy(S.t(), ids)) / 2).backward()
    assert t.logit_scale.grad.item() == pytest.approx(scale.grad.item(), rel=1e-4)


def test_learned_temperature_is_clamped_at_one_hundredth():
    t = LearnedTemperature(0.02)
    opt = torch.optim.Adam(t.parameters(), lr=0.5)
    for _ in range(5):  # a loss that wants 1/τ ever larger
        opt.zero_grad()
        (-t.logit_scale).backward()
        opt.step()
        t.clamp_()
    assert t.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    assert t.value == pytest.approx(0.01, rel=1e-6)


def test_learned_lse_temperature_falls_to_the_clamp(tmp_path, synth_args, capsys):
    # lse grows with τ, so training pushes τ down, here from the clamp itself: it must stay there
    run = str(tmp_path / "run")
    _run(
        synth_args
        + [
            "--logger_name",
            run,
            "--loss",
            "lse",
            "--learn_temperature",
            "--temperature",
            "0.012",
            "--learning_rate",
            "0.05",
            "--log_step",
            "2",
        ]
    )
    shown = [float(v) for v in TAU.findall(capsys.readouterr().out)]
    assert shown and min(shown) >= 0.01 and shown[-1] == pytest.approx(0.01)
    assert _ckpt(run)["logit_scale"].item() == pytest.approx(math.log(100), abs=1e-6)


def test_resume_restores_the_learned_temperature_exactly(tmp_path, synth_args, monkeypatch):
    args = synth_args + [
        "--loss",
        "infonce",
        "--learn_temperature",
        "--learning_rate",
        "0.01",
        "--num_epochs",
        "3",
        "--lr_update",
        "2",
    ]
    straight = str(tmp_path / "straight")
    _run(args + ["--logger_name", straight])

    stopped = str(tmp_path / "stopped")
    real_epoch = training.train_epoch

    def interrupt_third(*a, **k):
        if k["epoch"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(training, "train_epoch", interrupt_third)
    assert main(args + ["--logger_name", stopped]) == 130
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    _run(["--resume", os.path.join(stopped, "checkpoint.pth.tar"), "--data_cache", synth_args[1]])

    a, b = _ckpt(straight), _ckpt(stopped)
    assert torch.equal(a["logit_scale"], b["logit_scale"])
    assert a["logit_scale"].item() != pytest.approx(math.log(1 / 0.07), abs=1e-3)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert _csv(straight) != [] and [r["temperature"] for r in _csv(straight)] == [
        r["temperature"] for r in _csv(stopped)
    ]


def test_resume_cannot_switch_learning_on(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run, "--loss", "infonce"])
    capsys.readouterr()
    assert (
        main(
            [
                "--resume",
                os.path.join(run, "checkpoint.pth.tar"),
                "--data_cache",
                synth_args[1],
                "--num_epochs",
                "2",
                "--learn_temperature",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --learn_temperature: cannot be switched on"), err


@pytest.mark.parametrize(
    "extra,flag,says",
    [
        (["--loss", "infonce", "--temperature", "0"], "--temperature", "0"),
        (["--loss", "lse", "--temperature", "-0.1"], "--temperature", "-0.1"),
        (["--loss", "infonce", "--temperature", "inf"], "--temperature", "inf"),
        (["--loss", "infonce", "--temperature", "nan"], "--temperature", "nan"),
        (["--loss", "infonce", "--learn_temperature", "--temperature", "0.005"], "--temperature", "0.005"),
        (["--learn_temperature"], "--learn_temperature", "--loss sh"),
        (["--loss", "mh", "--learn_temperature"], "--learn_temperature", "--loss mh"),
        (["--loss", "infonce", "--warmup_steps", "5"], "--warmup_steps", "infonce"),
        (["--loss", "lse", "--max_violation"], "--max_violation", "lse"),
    ],
)
def test_bad_temperature_options_are_one_line(tmp_path, synth_args, capsys, extra, flag, says):
    assert main(synth_args + ["--logger_name", str(tmp_path / "r")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}: ") and says in err[0], err
    assert not (tmp_path / "r").exists()


def test_defaults_follow_the_loss(tmp_path):
    def fin(*argv):
        return options.finalize(*options.parse(["--data_path", str(tmp_path)] + list(argv)), log=lambda *_: None)

    assert fin("--loss", "lse").temperature == 0.05 and fin("--loss", "lse").margin == 0.2
    assert fin("--loss", "infonce").temperature == 0.07 and fin("--loss", "infonce").margin == 0.0
    assert fin("--loss", "infonce", "--margin", "0.1").margin == 0.1  # an additive margin, when asked for
    assert fin("--loss", "infonce", "--temperature", "0.5").temperature == 0.5
    assert fin("--loss", "infonce", "--learn_temperature", "--temperature", "0.01").learn_temperature
    assert fin().temperature is None and fin("--temperature", "0.1").temperature == 0.1  # unused by sh
