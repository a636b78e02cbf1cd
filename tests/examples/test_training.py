"""Few-step training runs on each data layout, exact resume, checkpoints and evaluate.py."""

import csv
import json
import os

import pytest
import torch
from vse import checkpoint, evaluation, training
from vse.evaluate_cli import main as evaluate_main
from vse.training import main

from .helpers import TINY, make_hf_text_model, make_precomp, make_raw


def _run(argv):
    assert main(argv) == 0


def _outputs_ok(run_dir, epochs=1):
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "metrics.csv", "metrics.png", "test_metrics.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "test_metrics.json")) as f:
        m = json.load(f)
    assert list(m) == list(evaluation.KEYS)
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp")]  # atomic writes leave nothing behind
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pth.tar"), weights_only=True)
    assert isinstance(ckpt["vocab"], list) and isinstance(ckpt["opt"], dict)
    return m, ckpt


def test_train_synthetic_and_evaluate(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run, "--max_violation"])
    out = capsys.readouterr().out
    assert "best achievable R@1" in out and "embedded demo:" in out and "MaxViolationLoss" in out
    assert "R@1" in out and "medr" in out
    m, ckpt = _outputs_ok(run)
    assert ckpt["opt"]["cnn_type"] == "smallcnn" and ckpt["opt"]["data_name"] == "synthetic"
    # evaluate.py on the best model reproduces the test figures and prints the same table
    assert (
        evaluate_main(
            [os.path.join(run, "model_best.pth.tar"), "--data_cache", synth_args[1], "--out", str(tmp_path / "m.json")]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "image→text" in printed and "meanr" in printed
    assert json.load(open(tmp_path / "m.json")) == pytest.approx(m)
    # options that cannot work are one line under their flag (the test split has 20 images: no 1K folds)
    for extra, flag in ((["--fold5"], "--fold5"), (["--batch_size", "0"], "--batch_size")):
        assert evaluate_main([os.path.join(run, "model_best.pth.tar"), "--data_cache", synth_args[1]] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag}: "), err


def test_train_precomp(tmp_path, capsys):
    make_precomp(str(tmp_path))
    run = str(tmp_path / "run")
    _run(
        TINY
        + [
            "--data_path",
            str(tmp_path),
            "--data_name",
            "toy_precomp",
            "--logger_name",
            run,
            "--loss",
            "topk",
            "--topk_k",
            "3",
            "--num_epochs",
            "2",
            "--lr_update",
            "1",
            "--vocab_path",
            str(tmp_path / "vocab"),
        ]
    )
    m, ckpt = _outputs_ok(run, epochs=2)
    assert ckpt["opt"]["img_dim"] == 12 and ckpt["opt"]["precomp"] is True
    assert json.load(open(tmp_path / "vocab" / "toy_precomp_vocab.json")) == ckpt["vocab"]  # --vocab_path wrote it
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    assert float(rows[1]["lr"]) == pytest.approx(2e-5)  # divided by 10 after lr_update epochs
    assert "random initialisation" not in capsys.readouterr().out  # no CNN on features


@pytest.mark.parametrize("name", ["f8k", "coco"])
def test_train_raw_images(tmp_path, name):
    make_raw(str(tmp_path), name)
    run = str(tmp_path / "run")
    _run(
        TINY
        + [
            "--data_path",
            str(tmp_path),
            "--data_name",
            name,
            "--logger_name",
            run,
            "--cnn_type",
            "smallcnn",
            "--crop_size",
            "32",
            "--finetune",
            "--loss",
            "lp",
            "--lp_p",
            "3",
            "--use_restval",
        ]
    )
    _outputs_ok(run)


def test_warmup_and_val_step(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run, "--warmup_steps", "3", "--val_step", "2"])
    out = capsys.readouterr().out
    assert "iteration 2: dev" in out and "warm-up" in out
    _, ckpt = _outputs_ok(run)
    assert ckpt["warmup"]["num_steps"] == 20  # 64 images × 5 captions / 16 per batch
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    assert float(rows[0]["mix"]) == 1.0


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resume_is_exact(tmp_path, synth_args, monkeypatch):
    args = synth_args + ["--loss", "mh", "--warmup_steps", "30"]
    args = [a for a in args if a != "--loss" and a != "mh"]
    straight = str(tmp_path / "straight")
    _run(args + ["--logger_name", straight, "--num_epochs", "3", "--lr_update", "2"])

    # the same run, interrupted during its third epoch, then resumed
    stopped = str(tmp_path / "stopped")
    real_epoch = training.train_epoch

    def interrupt_third(*a, **k):
        if k["epoch"] == 2:
            raise KeyboardInterrupt
        return real_epoch(*a, **k)

    monkeypatch.setattr(training, "train_epoch", interrupt_third)
    assert main(args + ["--logger_name", stopped, "--num_epochs", "3", "--lr_update", "2"]) == 130
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    assert torch.load(os.path.join(stopped, "checkpoint.pth.tar"), weights_only=True)["epoch"] == 2
    _run(["--resume", os.path.join(stopped, "checkpoint.pth.tar"), "--data_cache", synth_args[1]])

    a, b = _weights(os.path.join(straight, "checkpoint.pth.tar")), _weights(os.path.join(stopped, "checkpoint.pth.tar"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = torch.load(os.path.join(straight, "checkpoint.pth.tar"), weights_only=True)
    cb = torch.load(os.path.join(stopped, "checkpoint.pth.tar"), weights_only=True)
    assert ca["Eiters"] == cb["Eiters"] and ca["best_rsum"] == cb["best_rsum"] and ca["warmup"] == cb["warmup"]
    assert json.load(open(os.path.join(straight, "test_metrics.json"))) == json.load(
        open(os.path.join(stopped, "test_metrics.json"))
    )


def test_resume_extends_with_new_options(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run])
    _run(["--resume", os.path.join(run, "checkpoint.pth.tar"), "--num_epochs", "2", "--data_cache", synth_args[1]])
    assert "resuming" in capsys.readouterr().out
    ckpt = torch.load(os.path.join(run, "checkpoint.pth.tar"), weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["opt"]["num_epochs"] == 2 and ckpt["opt"]["embed_size"] == 32
    assert len(list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))) == 2
    # options given with --resume are checked like fresh ones; sizes that do not fit the weights are one line
    path = os.path.join(run, "checkpoint.pth.tar")
    for extra, start in (
        (["--margin", "-1"], "error: --margin: "),
        (["--embed_size", "64"], f"error: {path}: its weights do not fit"),
    ):
        assert main(["--resume", path, "--num_epochs", "3", "--data_cache", synth_args[1]] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(start), err


def test_checkpoint_is_weights_only_and_atomic(tmp_path):
    state = {"a": torch.ones(2), "opt": {"x": 1, "s": "y"}, "vocab": ["<pad>"]}
    path = str(tmp_path / "c.pth.tar")
    checkpoint.atomic_save(state, path)
    checkpoint.atomic_save(state, path)  # overwrite in place
    assert os.listdir(tmp_path) == ["c.pth.tar"]
    assert torch.load(path, weights_only=True)["opt"] == {"x": 1, "s": "y"}
    rng = checkpoint.rng_state()
    checkpoint.atomic_save(rng, path)
    x = torch.rand(3)
    checkpoint.set_rng_state(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(3), x)


def test_atomic_file_keeps_the_old_file_when_a_write_fails(tmp_path):
    # every output (checkpoints, metrics CSV/JSON/PNG, vocabulary, data cache) goes through it
    path = str(tmp_path / "out" / "m.json")
    with checkpoint.atomic_file(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError):
        with checkpoint.atomic_file(path) as f:
            f.write("half of the new")
            raise RuntimeError("interrupted")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path / "out") == ["m.json"]


def test_torchvision_cnn_and_local_weights(tmp_path, capsys):
    import torchvision
    from vse.model import EncoderImageFull

    enc = EncoderImageFull(16, "resnet18", finetune=False, crop_size=32)
    assert "random initialisation" in capsys.readouterr().out
    assert enc.fc.in_features == 512 and not any(p.requires_grad for p in enc.cnn.parameters())
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    path = str(tmp_path / "r18.pth")
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), path)
    enc = EncoderImageFull(16, "resnet18", finetune=True, crop_size=32, cnn_weights=path)
    assert torch.equal(enc.cnn.conv1.weight, ref.conv1.weight)
    assert "loaded CNN weights" in capsys.readouterr().out
    enc = EncoderImageFull(8, "mobilenet_v3_small", finetune=True, crop_size=32)  # classifier is a Sequential
    assert enc.fc.in_features == 1024


def test_unknown_cnn_type(tmp_path, synth_args, capsys):
    assert main(synth_args + ["--cnn_type", "resnet9000", "--logger_name", str(tmp_path / "r")]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err


def test_hf_text_encoder_optional(tmp_path, synth_args, capsys):
    pytest.importorskip("transformers")
    missing = str(tmp_path / "no-model")
    assert main(synth_args + ["--text_encoder", missing, "--logger_name", str(tmp_path / "r")]) == 2
    assert missing in capsys.readouterr().err


def test_hf_text_encoder_folder_that_is_no_model(tmp_path, synth_args, capsys):
    pytest.importorskip("transformers")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(synth_args + ["--text_encoder", str(empty), "--logger_name", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "transformers cannot load it" in err


def test_hf_text_encoder_model_this_torch_cannot_build(tmp_path, synth_args, capsys, monkeypatch):
    transformers = pytest.importorskip("transformers")

    def refuse(*args, **kwargs):  # as transformers 5 refuses BERT under torch < 2.6
        raise ImportError(
            "\nBertModel requires PyTorch >= 2.6, but PyTorch was not found or an older version"
            " is installed.\nPlease install or upgrade PyTorch."
        )

    model_dir = make_hf_text_model(str(tmp_path))
    capsys.readouterr()  # transformers' progress bars while saving it
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    assert main(synth_args + ["--text_encoder", model_dir, "--logger_name", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and model_dir in err and "BertModel requires PyTorch >= 2.6" in err


def test_hf_text_encoder_trains_and_evaluates(tmp_path, capsys):
    pytest.importorskip("transformers")
    from vse.model import EncoderTextHF, HFTokenizer

    model_dir = make_hf_text_model(str(tmp_path))
    tok = HFTokenizer(model_dir)
    batch = tok(["a dog runs", "the red ball on the grass"])
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()
    unk = tok.tok.unk_token_id
    assert (batch["input_ids"] != unk).all()  # the test's words are in the tiny vocabulary
    enc = EncoderTextHF(model_dir, embed_size=8)
    emb = enc(batch)
    assert emb.shape == (2, 8) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    # padding does not change a caption's embedding (mean over real tokens only)
    alone = enc(tok(["a dog runs"]))
    assert torch.allclose(alone[0], emb[0], atol=1e-5)

    make_precomp(str(tmp_path))
    run = str(tmp_path / "run")
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    _run(
        TINY
        + [
            "--data_path",
            str(tmp_path),
            "--data_name",
            "toy_precomp",
            "--logger_name",
            run,
            "--text_encoder",
            model_dir,
        ]
    )
    m, ckpt = _outputs_ok(run)
    assert ckpt["opt"]["text_encoder"] == model_dir
    trained = {k[len("txt_enc.model.") :]: v for k, v in ckpt["model"].items() if k.startswith("txt_enc.model.")}
    assert trained.keys() == before.keys()
    assert any(not torch.equal(trained[k], before[k]) for k in before)  # the transformer is fine-tuned
    capsys.readouterr()
    assert (
        evaluate_main(
            [os.path.join(run, "model_best.pth.tar"), "--data_path", str(tmp_path), "--out", str(tmp_path / "m.json")]
        )
        == 0
    )
    assert json.load(open(tmp_path / "m.json")) == pytest.approx(m)


def _with(path, **changes):
    """Rewrite the checkpoint at ``path`` with some entries changed (weights: ``scale`` multiplies them)."""
    ckpt = torch.load(path, weights_only=True)
    scale = changes.pop("scale", None)
    if scale is not None:
        ckpt["model"] = {k: v * scale if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    ckpt.update(changes)
    checkpoint.atomic_save(ckpt, path)


def test_resume_into_a_new_directory_tests_the_best_model(tmp_path, synth_args, capsys):
    first = str(tmp_path / "first")
    _run(synth_args + ["--logger_name", first])
    last, best = os.path.join(first, "checkpoint.pth.tar"), os.path.join(first, "model_best.pth.tar")
    cache = ["--data_cache", synth_args[1]]

    # the checkpoint resumed is not the best model (other weights, the same best rsum): the best beside
    # it is copied, and it is the one tested when no epoch beats it (here: no epoch left to train)
    _with(last, scale=0.5)
    copied = str(tmp_path / "copied")
    _run(["--resume", last, "--logger_name", copied] + cache)
    out = capsys.readouterr().out
    assert open(os.path.join(copied, "model_best.pth.tar"), "rb").read() == open(best, "rb").read()
    assert f"testing {copied}/model_best.pth.tar (epoch 1" in out
    assert evaluate_main([best, "--out", str(tmp_path / "best.json")] + cache) == 0
    assert json.load(open(os.path.join(copied, "test_metrics.json"))) == json.load(open(tmp_path / "best.json"))

    # a stored best rsum that no model beside the checkpoint holds: the resumed model is the best known
    _with(last, best_rsum=600.0)
    resumed = str(tmp_path / "resumed")
    _run(["--resume", last, "--logger_name", resumed, "--num_epochs", "2"] + cache)
    out = capsys.readouterr().out
    assert "the resumed model (epoch 1)" in out and f"testing {resumed}/model_best.pth.tar (epoch 1" in out
    kept = torch.load(os.path.join(resumed, "model_best.pth.tar"), weights_only=True)
    assert kept["epoch"] == 1 and kept["best_rsum"] == 600.0
    for k, v in _weights(last).items():
        assert torch.equal(kept["model"][k], v), k
    assert torch.load(os.path.join(resumed, "checkpoint.pth.tar"), weights_only=True)["epoch"] == 2


def test_no_validated_epoch_ignores_another_runs_best_model(tmp_path, synth_args, capsys):
    # a model_best.pth.tar of another size left in the directory: never loaded (a traceback before),
    # and the log says which model is tested
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run])
    _run(synth_args + ["--logger_name", run, "--num_epochs", "0", "--embed_size", "16"])
    out = capsys.readouterr().out
    assert "no epoch was validated" in out and "testing the model of epoch 0" in out
    # one whose best rsum is not this run's is not tested either
    _with(os.path.join(run, "model_best.pth.tar"), best_rsum=-1.0)
    _run(["--resume", os.path.join(run, "checkpoint.pth.tar"), "--data_cache", synth_args[1]])
    assert "is not this run's best model" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--logger_name", "--data_cache"])
def test_directory_option_that_is_a_file(tmp_path, synth_args, capsys, flag):
    somefile = tmp_path / "somefile"
    somefile.write_text("x")
    args = synth_args + ["--logger_name", str(tmp_path / "run")]
    for path in (somefile, somefile / "below"):
        argv = args + [flag, str(path)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag}: {path}") and "not a directory" in err[0], err


def test_evaluate_images_model_on_features(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    _run(synth_args + ["--logger_name", run])
    make_precomp(str(tmp_path))
    best = os.path.join(run, "model_best.pth.tar")
    capsys.readouterr()
    for extra, flag in (
        (["--data_path", str(tmp_path)], "--data_path"),
        (["--data_path", str(tmp_path), "--data_name", "toy_precomp"], "--data_name"),
        (["--data_name", "synthetic_precomp", "--data_cache", synth_args[1]], "--data_name"),
    ):
        assert evaluate_main([best] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag}: the checkpoint's model reads images"), err
    # and the other way round: a model of features on images
    feats = str(tmp_path / "feats")
    _run(TINY + ["--data_path", str(tmp_path), "--data_name", "toy_precomp", "--logger_name", feats])
    capsys.readouterr()
    argv = [os.path.join(feats, "model_best.pth.tar"), "--data_name", "synthetic", "--data_cache", synth_args[1]]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads precomputed features (12-d)" in err[0], err
