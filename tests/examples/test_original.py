"""The original VSE++ code's files on our code: its checkpoints (zip, legacy, Python 2) and
vocabulary pickles read without running code, its models evaluated by its formulas, --resume from
them, its exact loss (--duplicates_as_negatives), and its raw-COCO layout.

Every fixture is written here (original_fixtures.py); every expected figure comes from the
original's formulas written in this file (a GRU loop in float64, the original i2t/t2i loops),
never from the code under test."""

import argparse
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vse import checkpoint, data, original, training
from vse.errors import DataError
from vse.evaluate_cli import main as evaluate_main
from vse.model import build_model
from vse.training import main as train_main
from vse.vocab import VocabTokenizer, tokenize

from .original_fixtures import original_coco_tree, save_checkpoint, save_vocab

nltk_tokenize = pytest.importorskip("nltk.tokenize").word_tokenize

SPECIALS = ["<pad>", "<start>", "<end>", "<unk>"]
# words as NLTK splits them: "dog's" is dog + 's, "can't" is ca + n't
VOCAB_WORDS = SPECIALS + ["a", "dog", "'s", "ball", "ca", "n't", "run", ",", ".", "red", "man", "rides", "horse"]
CAPTION_WORDS = ["a", "dog's", "ball", "can't", "run", ",", "red", "man", "rides", "horse", "Grass", "the"]


def _captions(rng, n):
    return [" ".join(rng.choice(CAPTION_WORDS, size=rng.integers(3, 9))) + " ." for _ in range(n)]


def _opt(**kw):
    """The original train.py's options (its defaults, small sizes)."""
    base = dict(
        data_path="/w/31/faghri/vsepp_data/",
        data_name="toy_precomp",
        vocab_path="./vocab/",
        margin=0.2,
        num_epochs=30,
        batch_size=128,
        word_dim=6,
        embed_size=8,
        grad_clip=2.0,
        crop_size=224,
        num_layers=2,
        learning_rate=0.0002,
        lr_update=15,
        workers=10,
        log_step=10,
        val_step=500,
        logger_name="runs/coco_vse++",
        resume="",
        max_violation=True,
        img_dim=4096,
        finetune=False,
        cnn_type="vgg19",
        use_restval=False,
        measure="cosine",
        use_abs=False,
        no_imgnorm=False,
        reset_train=False,
        vocab_size=len(VOCAB_WORDS),
    )
    base.update(kw)
    return base


def _text_state(gen, vocab_size, word_dim, embed_size, num_layers):
    """The original EncoderText's state dict: ``embed`` and a ``rnn`` GRU."""
    state = {"embed.weight": torch.rand(vocab_size, word_dim, generator=gen) * 0.2 - 0.1}
    for layer in range(num_layers):
        n_in = word_dim if layer == 0 else embed_size
        state[f"rnn.weight_ih_l{layer}"] = torch.randn(3 * embed_size, n_in, generator=gen) * 0.5
        state[f"rnn.weight_hh_l{layer}"] = torch.randn(3 * embed_size, embed_size, generator=gen) * 0.5
        state[f"rnn.bias_ih_l{layer}"] = torch.randn(3 * embed_size, generator=gen) * 0.1
        state[f"rnn.bias_hh_l{layer}"] = torch.randn(3 * embed_size, generator=gen) * 0.1
    return state


# ----------------------------------------------------------------------------- the original's formulas


def _l2norm(x):
    return x / np.sqrt((x**2).sum(axis=1, keepdims=True))


def ref_caption_embeddings(captions, words, txt_state, num_layers, use_abs=False):
    """The original EncoderText in float64: ``<start>`` + word_tokenize(lower) + ``<end>`` as ids,
    the embedding, a GRU (r, z, n gates as torch defines them) layer by layer, the last layer's
    output at the last word, l2norm, |x| with use_abs."""
    w2i = {w: i for i, w in enumerate(words)}
    sd = {k: v.double().numpy() for k, v in txt_state.items()}

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    out = []
    for caption in captions:
        tokens = nltk_tokenize(caption.lower(), preserve_line=True)
        ids = [w2i["<start>"]] + [w2i.get(t, w2i["<unk>"]) for t in tokens] + [w2i["<end>"]]
        seq = [sd["embed.weight"][i] for i in ids]
        for layer in range(num_layers):
            wi, wh = sd[f"rnn.weight_ih_l{layer}"], sd[f"rnn.weight_hh_l{layer}"]
            bi, bh = sd[f"rnn.bias_ih_l{layer}"], sd[f"rnn.bias_hh_l{layer}"]
            h = np.zeros(wh.shape[1])
            outputs = []
            for x in seq:
                gi, gh = wi @ x + bi, wh @ h + bh
                ri, zi, ni = np.split(gi, 3)
                rh, zh, nh = np.split(gh, 3)
                r, z = sigmoid(ri + rh), sigmoid(zi + zh)
                n = np.tanh(ni + r * nh)
                h = (1 - z) * n + z * h
                outputs.append(h)
            seq = outputs
        out.append(seq[-1])
    emb = _l2norm(np.array(out))
    return np.abs(emb) if use_abs else emb


def ref_image_embeddings(features, fc_w, fc_b, no_imgnorm=False, use_abs=False, feature_norm=False):
    """The original image encoders after the CNN: [l2norm (full-image encoder)], fc, [l2norm], [|x|]."""
    x = np.asarray(features, dtype=np.float64)
    if feature_norm:
        x = _l2norm(x)
    x = x @ fc_w.double().numpy().T + fc_b.double().numpy()
    if not no_imgnorm:
        x = _l2norm(x)
    return np.abs(x) if use_abs else x


def ref_metrics(images, captions):
    """The original evaluation.py's i2t and t2i (argsort loops), and rsum."""
    n = len(images)
    i2t = np.zeros(n)
    for index in range(n):
        inds = np.argsort(images[index] @ captions.T)[::-1]
        i2t[index] = min(np.where(inds == i)[0][0] for i in range(5 * index, 5 * index + 5))
    t2i = np.zeros(5 * n)
    for index in range(n):
        for i, q in enumerate(captions[5 * index : 5 * index + 5]):
            inds = np.argsort(q @ images.T)[::-1]
            t2i[5 * index + i] = np.where(inds == index)[0][0]
    out = {}
    for d, r in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{d}_r{k}"] = 100.0 * (r < k).sum() / len(r)
        out[f"{d}_medr"] = np.floor(np.median(r)) + 1
        out[f"{d}_meanr"] = r.mean() + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


# ----------------------------------------------------------------------------- fixtures


def _precomp_data(root, name="toy_precomp", sizes=(("train", 24), ("dev", 8), ("test", 20)), dim=10, seed=0):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    out = {}
    for split, n in sizes:
        feats = rng.normal(size=(n, dim)).astype(np.float32)
        caps = _captions(rng, 5 * n)
        np.save(os.path.join(d, f"{split}_ims.npy"), feats)
        with open(os.path.join(d, f"{split}_caps.txt"), "w") as f:
            f.write("\n".join(caps) + "\n")
        out[split] = (feats, caps)
    return out


def _original_precomp_model(tmp_path, fmt="zip", opt_kw=None, ckpt_kw=None, vocab_kw=None):
    """An original-format checkpoint of a precomp model, its vocabulary pickle and data."""
    splits = _precomp_data(str(tmp_path / "data"))
    opt = _opt(**{"vocab_path": str(tmp_path / "vocab"), **(opt_kw or {})})
    gen = torch.Generator().manual_seed(1)
    img_state = {"fc.weight": torch.randn(opt["embed_size"], 10, generator=gen), "fc.bias": torch.randn(8) * 0.1}
    txt_state = _text_state(gen, len(VOCAB_WORDS), opt["word_dim"], opt["embed_size"], opt["num_layers"])
    path = str(tmp_path / "model_best.pth.tar")
    save_checkpoint(path, img_state, txt_state, opt, fmt=fmt, **(ckpt_kw or {}))
    save_vocab(str(tmp_path / "vocab" / f"{opt['data_name']}_vocab.pkl"), VOCAB_WORDS, **(vocab_kw or {}))
    return path, splits, opt, img_state, txt_state


def _error_line(capsys, code):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


OPEN = f"{open.__module__}.{open.__qualname__}"  # how a pickle names open (io.open)


class _RunsCode:
    """Unpickling this creates a file: the proof that a load ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


# ----------------------------------------------------------------------------- vocabularies


@pytest.mark.parametrize(
    "module,py2", [("vocab", False), ("__main__", False), ("vocab", True)], ids=["vocab", "__main__", "python2"]
)
def test_original_vocabulary_is_read(tmp_path, module, py2):
    path = str(tmp_path / "coco_vocab.pkl")
    words = SPECIALS + ["a", "café", "dog", "n't"]
    save_vocab(path, words, module=module, py2=py2)
    if py2:  # byte strings, protocol 2, as Python 2's pickle.HIGHEST_PROTOCOL wrote them
        raw = open(path, "rb").read()
        assert raw[:2] == b"\x80\x02" and b"U\x05<pad>" in raw and b"U\x05caf\xc3\xa9" in raw
    vocab = original.load_vocabulary(path)
    assert vocab.idx2word == words and vocab.tokenizer == "nltk"


def test_original_tokenisation(tmp_path):
    """The original's vocabulary splits captions as NLTK's word_tokenize did; ours keep our regex."""
    path = str(tmp_path / "f30k_vocab.pkl")
    save_vocab(path, VOCAB_WORDS)
    vocab = original.load_vocabulary(path)
    caption = "A dog's red Ball, can't run."
    expected = nltk_tokenize(caption.lower(), preserve_line=True)
    assert expected == ["a", "dog", "'s", "red", "ball", ",", "ca", "n't", "run", "."]
    assert tokenize(caption, "nltk") == expected
    assert vocab.encode(caption) == [1] + [VOCAB_WORDS.index(w) for w in expected] + [2]
    batch = VocabTokenizer(vocab)([caption])
    assert batch["ids"][0].tolist() == vocab.encode(caption)
    assert tokenize(caption) == ["a", "dog's", "red", "ball", ",", "can't", "run", "."]  # our own


def test_malicious_vocabulary_is_refused_without_running(tmp_path, capsys):
    marker = str(tmp_path / "ran")
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    path = vocab_dir / "toy_precomp_vocab.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(DataError) as e:
        original.load_vocabulary(str(path))
    assert e.value.where == str(path) and f"({OPEN})" in e.value.problem and "not loaded" in e.value.problem
    # and through train_coco.py --vocab_path: one line, exit status 2
    _precomp_data(str(tmp_path / "data"))
    args = ["--data_path", str(tmp_path / "data"), "--data_name", "toy_precomp", "--vocab_path", str(vocab_dir)]
    line = _error_line(capsys, train_main(args + ["--logger_name", str(tmp_path / "run"), "--workers", "0"]))
    assert line.startswith(f"error: {path}: holds a Python object ({OPEN})")
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    "content,problem",
    [
        (b"not a pickle", "not a readable pickle"),
        (pickle.dumps({"word2idx": {}}), "holds a dict, not the original code's vocab.Vocabulary"),
        (pickle.dumps([1, 2])[:-3], "not a readable pickle"),
    ],
    ids=["text", "a dict", "truncated"],
)
def test_broken_vocabulary(tmp_path, content, problem):
    path = tmp_path / "v.pkl"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        original.load_vocabulary(str(path))
    assert problem in e.value.problem and "\n" not in e.value.problem


# ----------------------------------------------------------------------------- checkpoints: our model = the original's


@pytest.mark.parametrize(
    "fmt,opt_kw",
    [
        ("zip", {}),
        ("legacy", {"use_abs": True, "no_imgnorm": True, "num_layers": 1}),
        ("py2", {"data_path": b"/data/caf\xe9"}),  # a Python 2 str in Latin-1
    ],
    ids=["zip", "legacy-abs-noimgnorm", "python2"],
)
def test_evaluate_original_precomp_checkpoint(tmp_path, capsys, fmt, opt_kw):
    path, splits, opt, img_state, txt_state = _original_precomp_model(
        tmp_path, fmt, opt_kw, vocab_kw={"py2": fmt == "py2"}
    )
    feats, caps = splits["test"]
    img_ref = ref_image_embeddings(
        feats, img_state["fc.weight"], img_state["fc.bias"], opt["no_imgnorm"], opt["use_abs"]
    )
    cap_ref = ref_caption_embeddings(caps, VOCAB_WORDS, txt_state, opt["num_layers"], opt["use_abs"])

    # our model, built from the converted checkpoint, computes the original's embeddings
    ckpt = checkpoint.load(path)
    assert ckpt["source"] == "original" and ckpt["epoch"] == 3 and ckpt["Eiters"] == 57 and ckpt["best_rsum"] == 123.4
    model_opt = argparse.Namespace(**ckpt["opt"])
    assert model_opt.precomp and model_opt.img_dim == 10
    model = build_model(model_opt, len(ckpt["vocab"]), log=lambda *a: None)
    checkpoint.load_weights(model, ckpt, path)
    model.eval()
    with torch.no_grad():
        img = model.img_enc(torch.from_numpy(feats)).double().numpy()
        cap = model.txt_enc(VocabTokenizer(original.load_vocabulary(ckpt["vocab_file"]))(caps)).double().numpy()
    np.testing.assert_allclose(img, img_ref, atol=1e-5)
    np.testing.assert_allclose(cap, cap_ref, atol=1e-5)
    if fmt == "py2":  # as Python 2 and torch 0.3 wrote it, from a GPU
        raw = open(path, "rb").read()
        assert b"ctorch._utils\n_rebuild_tensor\n" in raw and b"ctorch.cuda\nFloatStorage\n" in raw
        assert b"U\x06cuda:0" in raw and b"U\x03opt" in raw and b"cargparse\nNamespace\n" in raw
        assert ckpt["opt"]["data_path"] == "/data/café"

    # evaluate.py: the original's figures
    out = str(tmp_path / "m.json")
    data_path = str(tmp_path / "data")
    assert evaluate_main([path, "--data_path", data_path, "--device", "cpu", "--workers", "0", "--out", out]) == 0
    got = json.load(open(out))
    expected = ref_metrics(img_ref, cap_ref)
    assert 0 < expected["rsum"] < 600
    assert got == pytest.approx(expected, abs=1e-9)
    assert "original VSE++ checkpoint" in capsys.readouterr().out


def test_vocab_path_and_errors_of_original_checkpoints(tmp_path, capsys):
    path, _, opt, _, _ = _original_precomp_model(tmp_path, opt_kw={"vocab_path": "/nowhere/vocab/"})
    data_path = str(tmp_path / "data")
    base = [path, "--data_path", data_path, "--device", "cpu", "--workers", "0"]
    line = _error_line(capsys, evaluate_main(base))  # the stored ./vocab/ folder is not here
    assert line.startswith("error: /nowhere/vocab/toy_precomp_vocab.pkl: no such file") and "--vocab_path" in line
    assert evaluate_main(base + ["--vocab_path", str(tmp_path / "vocab")]) == 0
    capsys.readouterr()
    # a vocabulary of another size than the model's embedding
    other = tmp_path / "other"
    save_vocab(str(other / "toy_precomp_vocab.pkl"), VOCAB_WORDS[:-2])
    line = _error_line(capsys, evaluate_main(base + ["--vocab_path", str(other)]))
    assert f"{len(VOCAB_WORDS) - 2} words, but the model of" in line and f"embeds {len(VOCAB_WORDS)}" in line
    # a measure that this example does not compute (it computes cosine and order, as the original)
    other = tmp_path / "euclidean.pth.tar"
    save_checkpoint(
        str(other), {"fc.weight": torch.ones(8, 10), "fc.bias": torch.zeros(8)}, {}, _opt(measure="euclidean")
    )
    line = _error_line(capsys, evaluate_main([str(other), "--vocab_path", str(tmp_path / "vocab")]))
    assert line.startswith(f"error: {other}: trained with --measure euclidean")


def test_malicious_original_checkpoint_is_refused_without_running(tmp_path, capsys):
    marker = str(tmp_path / "ran")
    for fmt in ("zip", "legacy"):
        path = tmp_path / f"{fmt}.pth.tar"
        save_checkpoint(str(path), {"fc.weight": torch.ones(2, 2)}, {}, _opt(), fmt=fmt, extra={"x": _RunsCode(marker)})
        line = _error_line(capsys, evaluate_main([str(path)]))
        assert line.startswith(f"error: {path}: holds a Python object ({OPEN}) that is not loaded"), line
        assert not os.path.exists(marker)


def test_vgg_and_old_names_map_onto_our_model():
    """The original's VGG keys (``features`` in DataParallel, the classifier without its last
    layer, VGG's classifier named 1/4 before torchvision 989d52a) are our model's keys."""
    import torchvision
    from vse.model import EncoderImageFull

    with torch.device("meta"):
        vgg = torchvision.models.vgg11()
        ours = EncoderImageFull(16, "vgg11", False, 224, log=lambda *a: None)
    theirs = {"fc.weight": torch.empty(16, 4096), "fc.bias": torch.empty(16)}
    for key, value in vgg.state_dict().items():
        if key.startswith("features."):
            theirs["cnn.features.module." + key[len("features.") :]] = value
        elif not key.startswith("classifier.6."):
            theirs["cnn." + key] = value
    expected = {f"img_enc.{k}" for k in ours.state_dict()}
    assert set(original._image_state(theirs, False, "vgg11", "p")) == expected
    old = {
        k.replace("classifier.0.", "classifier.1.").replace("classifier.3.", "classifier.4."): v
        for k, v in theirs.items()
    }
    assert set(original._image_state(old, False, "vgg11", "p")) == expected
    # a precomputed-feature encoder takes the fc only, as the original's did
    assert set(original._image_state(theirs, True, "vgg11", "p")) == {"img_enc.fc.weight", "img_enc.fc.bias"}


# ----------------------------------------------------------------------------- the CNN model on the raw-COCO layout


def test_original_cnn_checkpoint_on_the_original_coco_layout(tmp_path, capsys):
    """A ResNet model of the original (``cnn.module.*``, batch norms without num_batches_tracked as
    before torch 0.4.1), evaluated on COCO in the original's layout: the embeddings are
    torchvision's ResNet → l2norm → fc → l2norm of the original's test transform."""
    import torchvision
    import torchvision.transforms as T
    from PIL import Image

    def five_or_more(rng):
        return _captions(rng, 5 + int(rng.integers(0, 3)))

    layout = original_coco_tree(
        str(tmp_path / "data"), five_or_more, {"train": 3, "dev": 2, "test": 3, "restval": 2}, side=48
    )
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    img_state = {"cnn.module." + k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    fc = torch.nn.Linear(512, 8)
    img_state.update({"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()})
    gen = torch.Generator().manual_seed(2)
    txt_state = _text_state(gen, len(VOCAB_WORDS), 6, 8, 1)
    opt = _opt(data_name="coco", cnn_type="resnet18", num_layers=1, vocab_path=str(tmp_path / "vocab"))
    path = str(tmp_path / "model_best.pth.tar")
    save_checkpoint(path, img_state, txt_state, opt, fmt="legacy")
    save_vocab(str(tmp_path / "vocab" / "coco_vocab.pkl"), VOCAB_WORDS)

    # the original's test images and captions, in the ids file's order
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])
    files = [f for f, _ in layout["test"]]
    caps = [c for _, cs in layout["test"] for c in cs]
    resnet.eval()
    with torch.no_grad():
        feats = resnet(torch.stack([tf(Image.open(f).convert("RGB")) for f in files])).double().numpy()
    img_ref = ref_image_embeddings(feats, fc.weight.detach(), fc.bias.detach(), feature_norm=True)
    cap_ref = ref_caption_embeddings(caps, VOCAB_WORDS, txt_state, 1)

    ckpt = checkpoint.load(path)
    assert ckpt["opt"]["cnn_feature_norm"] is True
    model_opt = argparse.Namespace(**{**ckpt["opt"], "data_path": str(tmp_path / "data")})
    assert not model_opt.precomp
    model = build_model(model_opt, len(ckpt["vocab"]), log=lambda *a: None)
    checkpoint.load_weights(model, ckpt, path)
    model.eval()
    split = data.load_split(model_opt, "test")
    assert split.files == files and split.captions == caps
    transform = data.ImageTransform("files", False, 224)
    with torch.no_grad():
        img = model.img_enc(torch.stack([transform(split, i) for i in range(3)])).double().numpy()
    np.testing.assert_allclose(img, img_ref, atol=1e-5)

    out = str(tmp_path / "m.json")
    args = [path, "--data_path", str(tmp_path / "data"), "--device", "cpu", "--workers", "0", "--out", out]
    assert evaluate_main(args) == 0
    assert json.load(open(out)) == pytest.approx(ref_metrics(img_ref, cap_ref), abs=1e-9)


def test_original_coco_layout_splits(tmp_path, monkeypatch):
    layout = original_coco_tree(
        str(tmp_path),
        lambda rng: _captions(rng, 5 + int(rng.integers(0, 3))),
        {"train": 3, "dev": 3, "test": 2, "restval": 2},
    )
    opt = argparse.Namespace(data_name="coco", data_path=str(tmp_path), use_restval=False)
    for split, parts in (("train", ["train"]), ("dev", ["dev"]), ("test", ["test"]), ("testall", ["test"])):
        got = data.load_split(opt, split)
        want = [item for p in parts for item in layout[p]]
        assert got.files == [f for f, _ in want] and got.captions == [c for _, cs in want for c in cs]
        assert got.n_images == len(want) and len(got.captions) == 5 * len(want)
    opt.use_restval = True
    got = data.load_split(opt, "train")
    assert got.files == [f for f, _ in layout["train"] + layout["restval"]]
    monkeypatch.setattr(original, "_COCO_DEV_CAPTIONS", 10)  # the original's first 5000 dev captions
    assert data.load_split(opt, "dev").files == [f for f, _ in layout["dev"][:2]]


def test_original_coco_layout_errors(tmp_path):
    layout = original_coco_tree(str(tmp_path), lambda rng: _captions(rng, 5), {"train": 2, "dev": 1, "test": 1})
    opt = argparse.Namespace(data_name="coco", data_path=str(tmp_path), use_restval=True)
    ann = tmp_path / "coco" / "annotations"
    with pytest.raises(DataError) as e:
        data.load_split(opt, "train")
    assert e.value.where == str(ann / "coco_restval_ids.npy") and "no such file" in e.value.problem
    np.save(ann / "coco_test_ids.npy", np.array([1, 2, 3]))
    with pytest.raises(DataError) as e:
        data.load_split(opt, "test")
    assert "caption id 1 is not in" in e.value.problem and e.value.where.endswith("coco_test_ids.npy")
    dev_ids = np.load(ann / "coco_dev_ids.npy")
    np.save(ann / "coco_test_ids.npy", dev_ids[:4])
    with pytest.raises(DataError) as e:
        data.load_split(opt, "test")
    assert "has 4 captions listed: at least 5 needed" in e.value.problem
    np.save(ann / "coco_test_ids.npy", dev_ids)
    image = layout["dev"][0][0]
    os.unlink(image)
    with pytest.raises(DataError) as e:
        data.load_split(opt, "test")
    assert e.value.where == str(image) and "missing image" in e.value.problem
    (ann / "captions_val2014.json").write_text('{"images": [')
    with pytest.raises(DataError) as e:
        data.load_split(opt, "test")
    assert "malformed JSON" in e.value.problem


# ----------------------------------------------------------------------------- --resume from the original


def test_resume_from_original_checkpoint(tmp_path, capsys):
    path, _, opt, _, _ = _original_precomp_model(
        tmp_path, fmt="py2", opt_kw={"margin": 0.15}, ckpt_kw={"epoch": 2, "best_rsum": 0.5, "eiters": 7}
    )
    common = ["--resume", path, "--data_path", str(tmp_path / "data"), "--workers", "0", "--device", "cpu"]
    common += ["--vocab_path", str(tmp_path / "vocab"), "--batch_size", "16", "--val_step", "0"]

    # no epoch left to train: the test figures are the original model's
    run0 = str(tmp_path / "run0")
    assert train_main(common + ["--logger_name", run0, "--num_epochs", "2"]) == 0
    out = str(tmp_path / "m.json")
    assert evaluate_main([path, "--data_path", str(tmp_path / "data"), "--device", "cpu", "--out", out]) == 0
    assert json.load(open(os.path.join(run0, "test_metrics.json"))) == pytest.approx(json.load(open(out)))
    assert not os.path.exists(os.path.join(run0, "checkpoint.pth.tar"))

    # one more epoch: epoch, iterations and the best dev rsum carry on; the options are the original's
    run1 = str(tmp_path / "run1")
    assert train_main(common + ["--logger_name", run1, "--num_epochs", "3"]) == 0
    log = capsys.readouterr().out
    assert "resuming" in log and "at epoch 3 (iteration 7)" in log and "Adam starts afresh" in log
    ckpt = checkpoint.load(os.path.join(run1, "checkpoint.pth.tar"), checkpoint.RESUME_KEYS)
    assert ckpt["epoch"] == 3 and ckpt["Eiters"] == 7 + 8  # 120 training pairs in batches of 16
    assert ckpt["best_rsum"] == max(0.5, ckpt["history"][-1]["rsum"])
    assert ckpt["opt"]["margin"] == 0.15 and ckpt["opt"]["max_violation"] and ckpt["opt"]["loss"] == "mh"
    assert ckpt["vocab"] == VOCAB_WORDS and ckpt["vocab_tokenizer"] == "nltk"
    # and the checkpoint written then resumes as our own do
    assert train_main(["--resume", os.path.join(run1, "checkpoint.pth.tar"), "--num_epochs", "3"]) == 0


# ----------------------------------------------------------------------------- the original loss


def ref_original_loss(img, cap, margin, max_violation):
    """The original ContrastiveLoss in float64 loops: cosine scores of the l2-normalised rows, every
    j != i a negative of pair i, summed (or the max over j with max_violation) in both directions."""
    s = F.normalize(img.double(), dim=1) @ F.normalize(cap.double(), dim=1).T
    n = len(s)
    total = 0.0
    for i in range(n):
        cost_s = [max(0.0, margin - s[i, i].item() + s[i, j].item()) for j in range(n) if j != i]
        cost_im = [max(0.0, margin - s[i, i].item() + s[j, i].item()) for j in range(n) if j != i]
        total += (max(cost_s) + max(cost_im)) if max_violation else (sum(cost_s) + sum(cost_im))
    return total


@pytest.mark.parametrize("loss", ["sh", "mh"])
def test_duplicates_as_negatives_is_the_original_loss(loss):
    gen = torch.Generator().manual_seed(0)
    img, cap = torch.randn(12, 6, generator=gen), torch.randn(12, 6, generator=gen)
    img_ids = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7])  # images seen twice and thrice
    cap_ids = torch.tensor([3, 1, 7, 10, 14, 12, 15, 20, 29, 27, 30, 35])
    opt = argparse.Namespace(loss=loss, margin=0.2, impl="auto", warmup_steps=0, duplicates_as_negatives=True)
    loss_fn, _ = training.build_loss(opt)
    labels = training.pair_labels(opt, cap_ids, img_ids)
    got = loss_fn(img, labels, ref_emb=cap, ref_labels=labels)
    expected = ref_original_loss(img, cap, 0.2, loss == "mh")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the default is label-aware: other captions of the same image are not negatives
    opt.duplicates_as_negatives = False
    labels = training.pair_labels(opt, cap_ids, img_ids)
    assert loss_fn(img, labels, ref_emb=cap, ref_labels=labels).item() != pytest.approx(expected, rel=1e-3)


def test_train_with_duplicates_as_negatives_and_an_original_vocabulary(tmp_path, capsys):
    _precomp_data(str(tmp_path / "data"))
    vocab_dir = str(tmp_path / "vocab")
    save_vocab(os.path.join(vocab_dir, "toy_precomp_vocab.pkl"), VOCAB_WORDS, module="__main__")
    run = str(tmp_path / "run")
    args = ["--data_path", str(tmp_path / "data"), "--data_name", "toy_precomp", "--logger_name", run]
    args += ["--workers", "0", "--embed_size", "8", "--word_dim", "4", "--batch_size", "16", "--num_epochs", "1"]
    assert train_main(args + ["--duplicates_as_negatives", "--val_step", "0", "--vocab_path", vocab_dir]) == 0
    assert "the original code's, tokenised by NLTK" in capsys.readouterr().out
    ckpt = checkpoint.load(os.path.join(run, "checkpoint.pth.tar"))
    assert ckpt["opt"]["duplicates_as_negatives"] is True
    assert ckpt["vocab"] == VOCAB_WORDS and ckpt["vocab_tokenizer"] == "nltk"
    assert not os.path.exists(os.path.join(vocab_dir, "toy_precomp_vocab.json"))
