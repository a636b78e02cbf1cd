"""Loading the three layouts, the vocabulary, and the one-line errors on broken data."""

import argparse
import json
import os

import numpy as np
import pytest
from vse import data
from vse.errors import ConfigError, DataError
from vse.training import main
from vse.vocab import VocabTokenizer, Vocabulary, from_vocab_path, tokenize

from .helpers import TINY, make_precomp, make_raw


def _opt(**kw):
    base = dict(
        data_path=None,
        data_name="synthetic",
        use_restval=False,
        data_seed=0,
        synthetic_train=8,
        synthetic_dev=4,
        synthetic_test=4,
        synthetic_size=32,
        data_cache=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_vocab_threshold_and_encoding():
    caps = ["A dog runs.", "a dog sits", "the dog, a cat", "a dog"]
    v = Vocabulary.build(caps, threshold=4)
    assert v.to_list() == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert tokenize("A dog, runs.") == ["a", "dog", ",", "runs", "."]
    assert v.encode("a cat") == [1, 4, 3, 2]
    assert Vocabulary(v.to_list()).word2idx == v.word2idx
    batch = VocabTokenizer(v)(["a", "a dog dog"])
    assert batch["lengths"].tolist() == [3, 5] and batch["ids"].shape == (2, 5) and batch["ids"][0, 3:].eq(0).all()


def test_vocab_path_writes_then_reads(tmp_path):
    caps = ["a dog runs"] * 4 + ["a cat"] * 3
    d = str(tmp_path / "vocab")
    notes = []
    built = from_vocab_path(d, "toy_precomp", caps, log=notes.append)
    path = os.path.join(d, "toy_precomp_vocab.json")
    assert json.load(open(path)) == built.to_list() == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"]
    assert path in notes[-1] and os.listdir(d) == ["toy_precomp_vocab.json"]
    # a saved vocabulary wins over the captions given (it is shared between runs and scripts)
    json.dump(["<pad>", "<start>", "<end>", "<unk>", "cat"], open(path, "w"))
    assert from_vocab_path(d, "toy_precomp", caps, log=notes.append).to_list()[-1] == "cat"
    # without a JSON file, the original code's pickle is read (tests/examples/test_original.py); a broken one
    # is an error naming it
    open(os.path.join(d, "f8k_vocab.pkl"), "wb").write(b"not a pickle")
    with pytest.raises(DataError) as e:
        from_vocab_path(d, "f8k", caps, write=False, log=notes.append)
    assert e.value.where == os.path.join(d, "f8k_vocab.pkl") and "not a readable pickle" in e.value.problem
    assert not os.path.exists(os.path.join(d, "f8k_vocab.json"))


@pytest.mark.parametrize(
    "content,problem",
    [('["<pad>", ', "malformed JSON"), ('{"a": 1}', "JSON list of words"), ('["a", "b"]', "must start with")],
)
def test_error_bad_vocab_file(tmp_path, capsys, content, problem):
    make_precomp(str(tmp_path))
    path = tmp_path / "v" / "toy_precomp_vocab.json"
    path.parent.mkdir()
    path.write_text(content)
    line = _run_error(
        capsys,
        TINY
        + [
            "--data_path",
            str(tmp_path),
            "--data_name",
            "toy_precomp",
            "--vocab_path",
            str(path.parent),
            "--logger_name",
            str(tmp_path / "r"),
        ],
    )
    assert str(path) in line and problem in line


def test_vocabulary_file_that_cannot_be_read(tmp_path):
    # not UTF-8, or not a file at all: a DataError naming the file, never a traceback
    latin = tmp_path / "latin.json"
    latin.write_bytes('["<pad>", "caf\u00e9"]'.encode("latin-1"))
    with pytest.raises(DataError) as e:
        Vocabulary.load(str(latin))
    assert e.value.where == str(latin) and "not UTF-8" in e.value.problem
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(DataError) as e:
        Vocabulary.load(str(folder))
    assert e.value.where == str(folder) and "cannot read it" in e.value.problem


def test_precomp(tmp_path):
    make_precomp(str(tmp_path))
    split = data.load_split(_opt(data_path=str(tmp_path), data_name="toy_precomp"), "train")
    assert split.n_images == 40 and len(split.captions) == 200 and split.img_dim == 12
    ds = data.PairDataset(split, data.ImageTransform("features", True, 0))
    img, cap, k, i = ds[11]
    assert i == 2 and k == 11 and img.shape == (12,) and cap == split.captions[11]


def test_precomp_with_one_feature_row_per_caption(tmp_path):
    d = make_precomp(str(tmp_path), sizes=(("dev", 3),))
    ims = np.load(os.path.join(d, "dev_ims.npy"))
    np.save(os.path.join(d, "dev_ims.npy"), np.repeat(ims, 5, axis=0))  # the f30k release layout
    split = data.load_split(_opt(data_path=str(tmp_path), data_name="toy_precomp"), "dev")
    assert split.n_images == 3
    np.testing.assert_array_equal(split.features, ims)


@pytest.mark.parametrize("name", ["coco", "f8k"])
def test_raw_karpathy(tmp_path, name):
    make_raw(str(tmp_path), name)
    opt = _opt(data_path=str(tmp_path), data_name=name)
    train = data.load_split(opt, "train")
    assert train.n_images == 12 and len(train.captions) == 60
    if name == "coco":
        assert "train2014" in train.files[0]
    opt.use_restval = True
    assert data.load_split(opt, "train").n_images == 15
    dev = data.load_split(opt, "dev")
    x = data.ImageTransform("files", False, 32)(dev, 0)
    assert dev.n_images == 4 and x.shape == (3, 32, 32)
    x = data.ImageTransform("files", True, 24)(train, 0)
    assert x.shape == (3, 24, 24)


def test_synthetic_split_and_limit(tmp_path):
    split = data.load_split(_opt(data_cache=str(tmp_path)), "train")
    assert split.n_images == 8 and split.array.shape == (8, 32, 32, 3) and len(split.captions) == 40
    small = data.limit_images(split, 3)
    assert small.n_images == 3 and len(small.captions) == 15 and small.array.shape[0] == 3


def test_layout_names():
    assert data.layout("coco_precomp") == "precomp" and data.layout("precomp") == "precomp"
    assert data.layout("f30k") == "raw" and data.layout("synthetic") == "synthetic"
    with pytest.raises(ConfigError, match="unknown data_name"):
        data.layout("imagenet")


# ------------------------------------------------------------------ broken data: one line, exit 2


def _run_error(capsys, argv):
    code = main(argv + ["--num_epochs", "1", "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_error_missing_image(tmp_path, capsys):
    base = make_raw(str(tmp_path), "f8k")
    victim = os.path.join(base, "images", "img_0003.png")
    os.remove(victim)
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "f8k", "--logger_name", str(tmp_path / "run")]
    )
    assert victim in line and "missing image" in line


def test_error_unreadable_image(tmp_path, capsys):
    base = make_raw(str(tmp_path), "f8k")
    victim = os.path.join(base, "images", "img_0000.png")
    with open(victim, "wb") as f:
        f.write(b"not a png")
    line = _run_error(
        capsys,
        [
            "--data_path",
            str(tmp_path),
            "--data_name",
            "f8k",
            "--cnn_type",
            "smallcnn",
            "--crop_size",
            "32",
            "--embed_size",
            "8",
            "--word_dim",
            "8",
            "--batch_size",
            "64",
            "--logger_name",
            str(tmp_path / "run"),
        ],
    )
    assert victim in line and "cannot read image" in line


def test_error_caption_count(tmp_path, capsys):
    d = make_precomp(str(tmp_path))
    caps = os.path.join(d, "train_caps.txt")
    with open(caps) as f:
        lines = f.read().splitlines()
    with open(caps, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "toy_precomp", "--logger_name", str(tmp_path / "run")]
    )
    assert caps in line and "199 captions for 40 images" in line


def test_error_malformed_json(tmp_path, capsys):
    base = make_raw(str(tmp_path), "f30k", sizes=(("train", 2),))
    path = os.path.join(base, "dataset_flickr30k.json")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[:-5])
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "f30k", "--logger_name", str(tmp_path / "r")]
    )
    assert path in line and "malformed JSON" in line


def test_error_json_structure_and_too_few_captions(tmp_path, capsys):
    base = make_raw(str(tmp_path), "f8k", sizes=(("train", 2),))
    path = os.path.join(base, "dataset_flickr8k.json")
    doc = json.load(open(path))
    doc["images"][1]["sentences"] = doc["images"][1]["sentences"][:3]
    json.dump(doc, open(path, "w"))
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "f8k", "--logger_name", str(tmp_path / "r")]
    )
    assert path in line and "3 captions" in line
    json.dump([1, 2], open(path, "w"))
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "f8k", "--logger_name", str(tmp_path / "r")]
    )
    assert path in line and "images" in line


def test_error_unknown_data_name_and_missing_dirs(tmp_path, capsys):
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "imagenet", "--logger_name", str(tmp_path / "r")]
    )
    assert "unknown data_name 'imagenet'" in line
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "coco_precomp", "--logger_name", str(tmp_path / "r")]
    )
    assert os.path.join(str(tmp_path), "coco_precomp") in line
    line = _run_error(
        capsys, ["--data_path", str(tmp_path / "nowhere"), "--data_name", "f8k", "--logger_name", str(tmp_path / "r")]
    )
    assert "nowhere" in line


def test_error_missing_cnn_weights(tmp_path, capsys, synth_args):
    missing = str(tmp_path / "resnet152.pth")
    line = _run_error(capsys, synth_args + ["--cnn_weights", missing, "--logger_name", str(tmp_path / "r")])
    assert missing in line and "no such file" in line


def test_error_bad_loss_options(tmp_path, capsys, synth_args):
    line = _run_error(capsys, synth_args + ["--loss", "topk", "--topk_k", "0", "--logger_name", str(tmp_path / "r")])
    assert line.startswith("error: --topk_k")
    line = _run_error(capsys, synth_args + ["--loss", "sh", "--max_violation", "--logger_name", str(tmp_path / "r")])
    assert "--max_violation" in line


def test_worker_errors_keep_one_line():
    """A DataError re-raised by a DataLoader worker carries the worker's traceback in one message."""
    msg = (
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1\nvse.errors.DataError: /d/img.png: cannot read image (bad)\n'
    )
    e = DataError(msg)
    assert e.where == "/d/img.png" and e.problem == "cannot read image (bad)"


def test_error_impl_without_gpu(tmp_path, capsys, synth_args, monkeypatch):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    # the triton kernel tests run the interpreter on the CPU; a user's CPU has no such switch on
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    line = _run_error(capsys, synth_args + ["--impl", "triton", "--logger_name", str(tmp_path / "r")])
    assert line.startswith("error: --impl")


def test_error_unreadable_image_in_a_worker(tmp_path, capsys):
    base = make_raw(str(tmp_path), "f8k", sizes=(("train", 4), ("val", 2), ("test", 2)))
    victim = os.path.join(base, "images", "img_0001.png")
    with open(victim, "wb") as f:
        f.write(b"not a png")
    code = main(
        [
            "--data_path",
            str(tmp_path),
            "--data_name",
            "f8k",
            "--cnn_type",
            "smallcnn",
            "--crop_size",
            "32",
            "--embed_size",
            "8",
            "--word_dim",
            "8",
            "--batch_size",
            "64",
            "--num_epochs",
            "1",
            "--workers",
            "1",
            "--logger_name",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and victim in err[0] and "cannot read image" in err[0], err


def test_precomp_one_caption_per_image_is_not_taken_for_repeats(tmp_path, capsys):
    d = make_precomp(str(tmp_path), sizes=(("train", 10),))
    caps = os.path.join(d, "train_caps.txt")
    with open(caps) as f:
        lines = f.read().splitlines()
    with open(caps, "w") as f:
        f.write("\n".join(lines[:10]) + "\n")  # 10 captions for 10 (distinct) feature rows
    line = _run_error(
        capsys, ["--data_path", str(tmp_path), "--data_name", "toy_precomp", "--logger_name", str(tmp_path / "run")]
    )
    assert caps in line and "10 captions for 10 images" in line


# ------------------------------------------------------------------ empty splits, field types, blank captions


@pytest.mark.parametrize(
    "sizes,split,karpathy",
    [((("train", 12), ("test", 4)), "dev", "val"), ((("train", 12), ("val", 4)), "test", "test")],
)
def test_error_split_without_images_before_training(tmp_path, capsys, monkeypatch, sizes, split, karpathy):
    base = make_raw(str(tmp_path), "f8k", sizes=sizes)
    monkeypatch.setattr(
        "vse.training.train_epoch", lambda *a, **k: pytest.fail("trained on a dataset without " + split)
    )
    argv = ["--data_path", str(tmp_path), "--data_name", "f8k", "--logger_name", str(tmp_path / "r")]
    line = _run_error(capsys, argv + ["--cnn_type", "smallcnn", "--crop_size", "32"])
    assert os.path.join(base, "dataset_flickr8k.json") in line
    assert f'no images of the {split} split (entries with "split": "{karpathy}")' in line


def test_error_precomp_split_without_images(tmp_path):
    # evaluate.py reads its split with load_split too
    d = make_precomp(str(tmp_path), sizes=(("test", 0),))
    with pytest.raises(DataError) as e:
        data.load_split(_opt(data_path=str(tmp_path), data_name="toy_precomp"), "test")
    assert e.value.where == os.path.join(d, "test_ims.npy") and "the test split is empty" in e.value.problem


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("filename", 7, "image entry 1: its 'filename' is 7, not a string"),
        ("split", ["train"], "image entry 1: its 'split' is ['train'], not a string"),
        ("filepath", None, "image entry 1: its 'filepath' is None, not a string"),
        ("sentences", [{"tokens": ["a", 1]}] * 5, "image entry 1 (img_0001.png): a sentence without 'raw' or 'tokens'"),
    ],
)
def test_error_karpathy_field_types(tmp_path, field, value, problem):
    base = make_raw(str(tmp_path), "coco", sizes=(("train", 3),))
    path = os.path.join(base, "dataset_coco.json")
    doc = json.load(open(path))
    doc["images"][1][field] = value
    json.dump(doc, open(path, "w"))
    with pytest.raises(DataError) as e:
        data.load_split(_opt(data_path=str(tmp_path), data_name="coco"), "train")
    assert e.value.where == path and e.value.problem == problem


def test_precomp_blank_caption_lines_are_captions(tmp_path):
    # as in the original PrecompDataset: every line is a caption, so a blank one keeps the others in place
    d = make_precomp(str(tmp_path), sizes=(("train", 4),))
    caps = os.path.join(d, "train_caps.txt")
    lines = open(caps).read().splitlines()
    lines[7] = ""
    open(caps, "w").write("\n".join(lines) + "\n")
    split = data.load_split(_opt(data_path=str(tmp_path), data_name="toy_precomp"), "train")
    assert split.captions == [ln.strip() for ln in lines]
    # a blank line too many: the count of `wc -l`, and the blank lines named
    open(caps, "a").write("\n")
    with pytest.raises(DataError) as e:
        data.load_split(_opt(data_path=str(tmp_path), data_name="toy_precomp"), "train")
    assert e.value.where == caps
    assert e.value.problem.startswith("21 captions for 4 images") and "2 blank (lines 8, 21)" in e.value.problem
