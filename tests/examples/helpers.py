"""Tiny datasets in each layout, built on the fly (imported by the tests as ``.helpers``)."""

import json
import os

import numpy as np
import pytest

WORDS = ["a", "dog", "cat", "runs", "on", "the", "grass", "red", "ball", "man", "rides", "horse"]

# Small everything: a few seconds per training run on a busy 2-core CPU.
TINY = [
    "--embed_size",
    "32",
    "--word_dim",
    "16",
    "--batch_size",
    "16",
    "--workers",
    "0",
    "--num_epochs",
    "1",
    "--val_step",
    "0",
]


def _captions(rng, n_images):
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 8))) for _ in range(5 * n_images)]


def make_precomp(root, name="toy_precomp", sizes=(("train", 40), ("dev", 10), ("test", 10)), dim=12, seed=0):
    rng = np.random.default_rng(seed)
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    for split, n in sizes:
        np.save(os.path.join(d, f"{split}_ims.npy"), rng.normal(size=(n, dim)).astype(np.float32))
        with open(os.path.join(d, f"{split}_caps.txt"), "w") as f:
            f.write("\n".join(_captions(rng, n)) + "\n")
    return d


def make_raw(root, name="f8k", sizes=(("train", 12), ("val", 4), ("test", 4), ("restval", 3)), seed=0, side=40):
    """Karpathy-style JSON and tiny PNG images; COCO images go under images/{filepath}/."""
    from PIL import Image

    json_name = {"coco": "dataset_coco.json", "f30k": "dataset_flickr30k.json", "f8k": "dataset_flickr8k.json"}[name]
    rng = np.random.default_rng(seed)
    base = os.path.join(root, name)
    entries = []
    k = 0
    for split, n in sizes:
        for _ in range(n):
            filepath = ("val2014" if split != "train" else "train2014") if name == "coco" else None
            filename = f"img_{k:04d}.png"
            folder = os.path.join(base, "images", filepath) if filepath else os.path.join(base, "images")
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)).save(
                os.path.join(folder, filename)
            )
            e = {
                "filename": filename,
                "split": split,
                "imgid": k,
                "sentences": [{"raw": c, "tokens": c.split()} for c in _captions(rng, 1)],
            }
            if filepath:
                e["filepath"] = filepath
            entries.append(e)
            k += 1
    with open(os.path.join(base, json_name), "w") as f:
        json.dump({"images": entries, "dataset": name}, f)
    return base


def make_hf_text_model(root, words=WORDS):
    """A tiny BERT (one layer, hidden 16) and its word-level tokenizer, saved in a local
    directory the way ``save_pretrained`` writes a downloaded model; random weights. Skips the
    test where transformers is missing or cannot build BERT with this torch (transformers 5
    needs torch >= 2.6)."""
    transformers = pytest.importorskip("transformers")

    d = os.path.join(root, "tiny-bert")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)
    try:  # transformers >= 5: the tokenizers-backed class takes the vocabulary itself
        tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(tokens)})
    except TypeError:  # transformers 4: the Python tokenizer reads vocab.txt
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "vocab.txt"), "w") as f:
            f.write("\n".join(tokens) + "\n")
        tok = transformers.BertTokenizer(vocab_file=os.path.join(d, "vocab.txt"))
    tok.save_pretrained(d)
    cfg = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    try:
        model = transformers.BertModel(cfg)
    except ImportError as e:
        pytest.skip(f"transformers cannot build BERT here: {str(e).strip().splitlines()[0]}")
    model.save_pretrained(d)
    return d
