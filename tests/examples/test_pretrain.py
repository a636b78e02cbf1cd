"""The embedded data's pretrained smallcnn and --data_name synthetic_precomp."""

import os

import numpy as np
import pytest
import torch
from vse import checkpoint, data, options, pretrain, synthetic
from vse.evaluate_cli import main as evaluate_main
from vse.model import SmallCNN, build_model
from vse.training import main

TINY_PRETRAIN = pretrain.PretrainConfig(seed=5, n_images=24, epochs=1, batch_size=8)


def _opt(argv):
    opt, explicit = options.parse(argv)
    return options.finalize(opt, explicit, log=lambda *a: None)


def _cnn_state(model_state):
    prefix = "img_enc.cnn."
    return {k[len(prefix) :]: v for k, v in model_state.items() if k.startswith(prefix)}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_labels_name_each_cell_attributes():
    # an explicit layout: cell c owns labels 12c..12c+11 = 4 shapes, 6 colours, 2 sizes
    scene = ((2, 5, 0, 0), (1, 0, 1, 7))  # a small cyan triangle top left, a large red square bottom centre
    y = pretrain.labels(scene)
    expected = np.zeros(108, np.float32)
    for i in (0 * 12 + 2, 0 * 12 + 4 + 5, 0 * 12 + 10 + 0, 7 * 12 + 1, 7 * 12 + 4 + 0, 7 * 12 + 10 + 1):
        expected[i] = 1
    np.testing.assert_array_equal(y, expected)


def test_pretraining_is_deterministic_from_its_seed_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, summary = pretrain.train(TINY_PRETRAIN, set(), log=lambda *a: None)
    assert torch.equal(torch.get_rng_state(), before)  # forked: the caller's stream is untouched
    b, _ = pretrain.train(TINY_PRETRAIN, set(), log=lambda *a: None)
    assert _same(a, b)
    other = pretrain.PretrainConfig(**{**TINY_PRETRAIN.__dict__, "seed": 6})
    c, _ = pretrain.train(other, set(), log=lambda *a: None)
    assert not torch.equal(a["fc.1.weight"], c["fc.1.weight"])
    assert 0 <= summary["heldout_label_accuracy"] <= 1
    # the weights fit the smallcnn of the retrieval model
    SmallCNN(in_size=32).load_state_dict(a)


def test_pretraining_images_are_disjoint_from_the_retrieval_splits():
    retrieval = synthetic.generate(synthetic.SyntheticConfig(seed=0, n_train=200, n_dev=50, n_test=50))
    excluded = pretrain.excluded_descriptions(retrieval)
    assert len(excluded) > 250  # every split's descriptions
    cfg = pretrain.PretrainConfig(seed=0, n_images=300, epochs=1)
    # the stream alone: some of its scenes are put into the excluded set to see the exclusion work
    _, _, free = pretrain.pretraining_set(cfg, set())
    forced = excluded | set(free[:10])
    images, y, scenes = pretrain.pretraining_set(cfg, forced)
    assert len(scenes) == 300 and images.shape == (300, 32, 32, 3) and y.shape == (300, 108)
    assert not set(scenes) & forced
    assert scenes[:5] != [retrieval["train"]["descriptions"][i] for i in range(5)]  # its own stream
    # and no pretraining image equals a retrieval image
    ret = {img.tobytes() for split in retrieval.values() for img in split["images"]}
    assert not any(img.tobytes() in ret for img in images)


def test_default_cnn_is_pretrained_frozen_unless_finetune_and_from_scratch_is_random(synth_args):
    opt = _opt(synth_args)
    assert not opt.finetune and pretrain.applies(opt)
    pretrain.use_pretrained_cnn(opt, log=lambda *a: None)
    assert opt.cnn_weights == pretrain.weights_path(opt) and os.path.isfile(opt.cnn_weights)
    saved = torch.load(opt.cnn_weights, weights_only=True)
    model = build_model(opt, 10, log=lambda *a: None)
    assert _same(_cnn_state(model.state_dict()), saved)
    assert not any(p.requires_grad for p in model.img_enc.cnn.parameters())
    model.train()
    assert not model.img_enc.cnn.training  # frozen: BatchNorm uses and keeps its running statistics
    assert _opt(synth_args + ["--finetune"]).finetune
    scratch = _opt(synth_args + ["--from_scratch"])
    assert not pretrain.applies(scratch)
    pretrain.use_pretrained_cnn(scratch)
    assert scratch.cnn_weights is None
    user = _opt(synth_args + ["--cnn_weights", "mine.pth"])
    assert not pretrain.applies(user)  # the user's weights win


@pytest.mark.parametrize("finetune", [False, True])
def test_frozen_keeps_the_pretrained_cnn_and_finetune_updates_it(tmp_path, synth_args, capsys, finetune):
    run = str(tmp_path / "run")
    assert main(synth_args + ["--logger_name", run] + (["--finetune"] if finetune else [])) == 0
    out = capsys.readouterr().out
    ckpt = checkpoint.load(os.path.join(run, "checkpoint.pth.tar"))
    pretrained = torch.load(ckpt["opt"]["cnn_weights"], weights_only=True)
    assert "loaded CNN weights from" in out and ckpt["opt"]["cnn_weights"] == pretrain.weights_path(_opt(synth_args))
    trained = _cnn_state(ckpt["model"])
    if finetune:
        assert not torch.equal(trained["features.0.weight"], pretrained["features.0.weight"])
        assert not torch.equal(trained["features.1.running_mean"], pretrained["features.1.running_mean"])
    else:  # weights and BatchNorm statistics alike
        assert _same(trained, pretrained)


def test_from_scratch_starts_from_random_weights(tmp_path, synth_args, capsys):
    run = str(tmp_path / "run")
    assert main(synth_args + ["--logger_name", run, "--from_scratch", "--finetune"]) == 0
    out = capsys.readouterr().out
    assert "starts from random initialisation" in out and "pretraining the smallcnn" not in out
    assert checkpoint.load(os.path.join(run, "checkpoint.pth.tar"))["opt"]["cnn_weights"] is None


def test_synthetic_precomp_features_are_the_pretrained_cnn_on_the_images(tmp_path, synth_args, capsys):
    opt = _opt(synth_args + ["--data_name", "synthetic_precomp"])
    assert opt.precomp and opt.data_name == "synthetic_precomp"
    images = data.load_split(_opt(synth_args), "dev")
    feats = data.load_split(opt, "dev", log=lambda *a: None)
    assert feats.kind == "features" and feats.features.shape == (images.n_images, 512)
    assert feats.captions == images.captions and feats.descriptions == images.descriptions
    # the reference: the saved weights in a fresh SmallCNN, in eval mode, on the training loader's tensors
    cnn = SmallCNN(in_size=32)
    cnn.load_state_dict(torch.load(pretrain.weights_path(opt), weights_only=True))
    cnn.eval()
    tf = data.ImageTransform("array", False, 32)
    with torch.no_grad():
        ref = torch.stack([cnn(tf(images, i).unsqueeze(0))[0] for i in range(images.n_images)])
    np.testing.assert_allclose(feats.features, ref.numpy(), rtol=1e-4, atol=1e-5)
    # cached: read back without the CNN
    assert any(n.startswith("synthetic_precomp_") for n in os.listdir(synth_args[1]))
    np.testing.assert_array_equal(data.load_split(opt, "dev").features, feats.features)
    # a run on them, and evaluate.py on its checkpoint
    run = str(tmp_path / "run")
    assert main(synth_args + ["--logger_name", run, "--data_name", "synthetic_precomp"]) == 0
    assert "linear on 512-d features" in capsys.readouterr().out
    assert evaluate_main([os.path.join(run, "model_best.pth.tar"), "--data_cache", synth_args[1]]) == 0


def test_cache_is_keyed_by_the_settings(synth_args):
    paths = {
        pretrain.weights_path(_opt(synth_args + extra))
        for extra in ([], ["--pretrain_seed", "1"], ["--pretrain_epochs", "2"], ["--data_seed", "1"])
    }
    assert len(paths) == 4
