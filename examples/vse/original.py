"""The original VSE++ code's files (github.com/fartashf/vsepp), read without running code.

- Checkpoints: ``torch.save`` of ``{"model": [image encoder state_dict, text encoder state_dict],
  "opt": argparse.Namespace, "epoch", "best_rsum", "Eiters"}``, in any torch format (zip, legacy,
  Python 2 pickles). ``checkpoint.load`` reads them with ``weights_only=True`` and
  ``argparse.Namespace`` allowed; :func:`convert_checkpoint` turns one into a train_coco.py
  checkpoint: the state-dict keys mapped onto ``model.VSEModel``, the options onto ours, and the
  vocabulary read from ``{vocab_path}/{data_name}_vocab.pkl``.
- Vocabularies: a pickled ``vocab.Vocabulary`` (``word2idx``, ``idx2word``, ``idx``), read by a
  restricted unpickler that admits that class (under any module name: ``vocab``, ``__main__``)
  and plain containers only. It keeps the original tokeniser (``vocab.tokenize(..., "nltk")``).
- The raw-COCO layout of the original ``data.py``: ``{data_path}/coco/annotations/
  coco_{train,dev,test,restval}_ids.npy`` (COCO caption annotation ids, five per image in a row)
  with ``captions_{train,val}2014.json`` and the images under ``images/{train,val}2014/``.

The models agree with the original's formulas: precomputed features → fc → l2norm; a CNN's pooled
features → l2norm → fc → l2norm (``--cnn_feature_norm``, which converted checkpoints set);
``--no_imgnorm`` drops the final l2norm of the image side; a caption is ``<start> tokens <end>``
through the embedding and the GRU, its output at the caption's last word, l2norm; ``--use_abs``
takes |x| of both embeddings.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from .errors import DataError, read_json
from .vocab import Vocabulary

# What an original checkpoint does not hold: --resume starts Adam afresh and keeps this run's RNGs.
NOT_STORED = ("optimizer", "rng")


# ----------------------------------------------------------------------------- pickles


class OriginalVocabulary:
    """What a pickled ``vocab.Vocabulary`` becomes here: unpickling only fills ``__dict__``
    (``word2idx``, ``idx2word``, ``idx``); the class has no methods that unpickling could call."""


# Plain containers, as Python 3 and Python 2 (``__builtin__``) name them.
_CONTAINERS = {
    (module, name): obj
    for module in ("builtins", "__builtin__")
    for name, obj in (("dict", dict), ("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset))
}
_CONTAINERS[("collections", "OrderedDict")] = OrderedDict


class _Refused(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds ``Vocabulary`` objects (as :class:`OriginalVocabulary`) and plain
    containers, and refuses every other global, so that nothing in the file can run."""

    def find_class(self, module: str, name: str):
        if name == "Vocabulary":
            return OriginalVocabulary
        if (module, name) in _CONTAINERS:
            return _CONTAINERS[(module, name)]
        raise _Refused(f"{module}.{name}")


def restricted_load(path: str) -> Any:
    """The object pickled in ``path``, by :class:`RestrictedUnpickler`. A Python 2 pickle's byte
    strings are read as UTF-8 (what Python 2 wrote on Linux), or Latin-1 if they are not UTF-8.
    Any failure is a DataError naming ``path``."""
    if not os.path.isfile(path):
        raise DataError(path, "no such file")
    for encoding in ("utf-8", "latin1"):
        try:
            with open(path, "rb") as f:
                return RestrictedUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except _Refused as e:
            raise DataError(
                path,
                f"holds a Python object ({e.name}) that is not loaded: unpickling it could run code; an original "
                "VSE++ vocabulary holds a Vocabulary of plain dicts only",
            ) from None
        except OSError as e:
            raise DataError(path, f"cannot read it ({e.strerror})") from None
        except Exception as e:  # noqa: BLE001 - any other unpickling failure is one line
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(path, f"not a readable pickle ({reason})") from None
    raise DataError(path, "not a readable pickle (its strings are neither UTF-8 nor Latin-1)")


def load_vocabulary(path: str) -> Vocabulary:
    """The original code's vocabulary pickle at ``path`` as a :class:`vocab.Vocabulary` with the
    original tokeniser (``nltk``); a file that is not one is a DataError naming it."""
    obj = restricted_load(path)
    if not isinstance(obj, OriginalVocabulary):
        raise DataError(path, f"holds a {type(obj).__name__}, not the original code's vocab.Vocabulary")
    idx2word, word2idx = getattr(obj, "idx2word", None), getattr(obj, "word2idx", None)
    if not isinstance(idx2word, dict) or not isinstance(word2idx, dict):
        raise DataError(path, "a Vocabulary without the dicts idx2word and word2idx")
    n = len(idx2word)
    if set(idx2word) != set(range(n)) or not all(isinstance(w, str) for w in idx2word.values()):
        raise DataError(path, f"its idx2word is not a word for each index 0..{n - 1}")
    words = [idx2word[i] for i in range(n)]
    if word2idx != {w: i for i, w in enumerate(words)}:
        raise DataError(path, "its word2idx and idx2word disagree")
    try:
        return Vocabulary(words, tokenizer="nltk")
    except ValueError as e:
        raise DataError(path, str(e)) from None


# ----------------------------------------------------------------------------- checkpoints


def is_original(obj: Any) -> bool:
    """Whether a loaded checkpoint is the original code's: its options are an argparse.Namespace."""
    return isinstance(obj, dict) and isinstance(obj.get("opt"), argparse.Namespace)


def convert_checkpoint(obj: dict, path: str, vocab_path: str | None = None) -> dict[str, Any]:
    """An original checkpoint (``obj``, loaded from ``path``) as a train_coco.py checkpoint: our
    model's state dict, our options (the original's, ours at their defaults, and
    ``cnn_feature_norm``), the vocabulary of ``{vocab_path}/{data_name}_vocab.pkl`` (``vocab_path``
    None: the checkpoint's own, ``./vocab/`` in the original) with its ``nltk`` tokeniser, and
    ``epoch``, ``Eiters``, ``best_rsum``. ``data_name`` is the one the model was trained on."""
    from .options import build_parser

    stored = vars(obj["opt"])
    model = obj.get("model")
    if not (isinstance(model, (list, tuple)) and len(model) == 2 and all(isinstance(m, dict) for m in model)):
        raise DataError(
            path,
            "an original VSE++ checkpoint whose 'model' is not [image encoder state_dict, text encoder state_dict]",
        )
    missing = [k for k in ("data_name", "embed_size", "word_dim") if k not in stored]
    if missing:
        raise DataError(path, f"an original VSE++ checkpoint whose options lack {', '.join(map(repr, missing))}")
    parser = build_parser()
    defaults = vars(parser.parse_args([]))
    measures = next(a.choices for a in parser._actions if a.dest == "measure")  # what our scores compute
    if stored.get("measure", "cosine") not in measures:
        raise DataError(
            path, f"trained with --measure {stored['measure']}, which this example does not compute (only {measures})"
        )
    opt = {**defaults, **{k: v for k, v in stored.items() if k in defaults}}
    opt["data_name"] = data_name = str(stored["data_name"])
    opt["cnn_weights"] = None
    opt["cnn_feature_norm"] = True  # the original's EncoderImageFull normalises the CNN's features
    opt["precomp"] = precomp = data_name.endswith("_precomp")
    state = _image_state(model[0], precomp, str(opt["cnn_type"]), path)
    state.update((f"txt_enc.{k}", v) for k, v in model[1].items())
    if precomp:
        opt["img_dim"] = int(state["img_enc.fc.weight"].shape[1])
    opt["num_layers"] = sum(1 for k in model[1] if k.startswith("rnn.weight_ih_l")) or opt["num_layers"]

    folder = vocab_path if vocab_path is not None else str(stored.get("vocab_path", "./vocab/"))
    vocab_file = os.path.join(folder, f"{data_name}_vocab.pkl")
    if not os.path.isfile(vocab_file):
        raise DataError(
            vocab_file,
            "no such file: an original VSE++ checkpoint does not hold its vocabulary; give --vocab_path, the "
            f"folder of the original {data_name}_vocab.pkl (the release's vocab.tar)",
        )
    vocab = load_vocabulary(vocab_file)
    rows = state.get("txt_enc.embed.weight")
    if rows is not None and rows.shape[0] != len(vocab):
        raise DataError(
            vocab_file,
            f"{len(vocab)} words, but the model of {path} embeds {rows.shape[0]}: not the vocabulary it was "
            "trained with",
        )
    out = {
        "source": "original",
        "model": state,
        "opt": opt,
        "vocab": vocab.to_list(),
        "vocab_tokenizer": vocab.tokenizer,
        "vocab_file": vocab_file,
    }
    for key, kind in (("epoch", int), ("Eiters", int), ("best_rsum", float)):
        if key in obj:
            out[key] = kind(obj[key])
    return out


def _image_state(state: dict, precomp: bool, cnn_type: str, path: str) -> dict[str, torch.Tensor]:
    """The original image encoder's state dict under ``model.VSEModel``'s names (``img_enc.``).

    The original wrapped VGG's ``features`` (``cnn.features.module.*``) or the whole ResNet
    (``cnn.module.*``) in DataParallel, and named VGG's classifier layers 1 and 4 before
    torchvision 989d52a (0 and 3 since). A precomputed-feature encoder takes the ``fc`` only, as
    the original's did. Batch norms saved before torch 0.4.1 get ``num_batches_tracked`` = 0.
    """
    if not precomp and not cnn_type.startswith(("vgg", "resnet")):
        raise DataError(
            path, f"an original VSE++ checkpoint with --cnn_type {cnn_type}: the original builds vgg* and resnet* only"
        )
    if "cnn.classifier.1.weight" in state:  # the original's load_state_dict renamed these
        renamed = {"cnn.classifier.1.": "cnn.classifier.0.", "cnn.classifier.4.": "cnn.classifier.3."}
        state = OrderedDict((_replace_prefix(k, renamed), v) for k, v in state.items())
    out = OrderedDict()
    for key, value in state.items():
        if precomp and not key.startswith("fc."):
            continue
        key = _replace_prefix(key, {"cnn.module.": "cnn.", "cnn.features.module.": "cnn.features."})
        out[f"img_enc.{key}"] = value
    for key in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(key[: -len("running_var")] + "num_batches_tracked", torch.tensor(0))
    if "img_enc.fc.weight" not in out:
        raise DataError(path, "an original VSE++ checkpoint whose image encoder has no fc layer")
    return out


def _replace_prefix(key: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


# ----------------------------------------------------------------------------- the raw-COCO layout

# Our split → the original's ids file and the COCO subset (annotations and image folder) it indexes.
_COCO_PARTS = {"train": ("train", "train2014"), "dev": ("dev", "val2014"), "test": ("test", "val2014")}
_COCO_RESTVAL = ("restval", "val2014")
_COCO_DEV_CAPTIONS = 5000  # the original validated on the first 5000 dev captions (1000 images)


def coco_layout(data_path: str) -> bool:
    """Whether ``{data_path}/coco`` is in the original code's layout (``annotations/``) and has no
    Karpathy split file (which wins when both are there)."""
    root = os.path.join(data_path, "coco")
    return not os.path.isfile(os.path.join(root, "dataset_coco.json")) and os.path.isdir(
        os.path.join(root, "annotations")
    )


def load_coco(data_path: str, split: str, use_restval: bool = False, check_files: bool = True):
    """A split of ``{data_path}/coco`` in the original layout as ``data.SplitData``: the captions
    the ids file lists, grouped by image in order of first appearance (the first 5 of each image,
    as for Karpathy's file; fewer is an error); ``testall`` is ``test``; ``dev`` its first 5000
    captions, as in the original; ``--use_restval`` adds restval to train."""
    from . import data

    root = os.path.join(data_path, "coco")
    parts = [_COCO_PARTS["test" if split == "testall" else split]]
    if split == "train" and use_restval:
        parts.append(_COCO_RESTVAL)
    files, captions = [], []
    for ids_name, subset in parts:
        ids_path = os.path.join(root, "annotations", f"coco_{ids_name}_ids.npy")
        ids = _read_ids(ids_path)
        if ids_name == "dev":
            ids = ids[:_COCO_DEV_CAPTIONS]
        json_path = os.path.join(root, "annotations", f"captions_{subset}.json")
        anns, file_names = _read_coco_captions(json_path)
        groups: dict[int, list[str]] = {}
        for ann_id in ids.tolist():
            if ann_id not in anns:
                raise DataError(ids_path, f"caption id {ann_id} is not in {json_path}")
            image_id, caption = anns[ann_id]
            groups.setdefault(image_id, []).append(caption)
        for image_id, caps in groups.items():
            if len(caps) < data.CAPS_PER_IMAGE:
                raise DataError(
                    ids_path, f"image {image_id} has {len(caps)} captions listed: at least {data.CAPS_PER_IMAGE} needed"
                )
            if image_id not in file_names:
                raise DataError(json_path, f"image {image_id} of caption ids in {ids_path} is not among its images")
            captions += [c.strip() for c in caps[: data.CAPS_PER_IMAGE]]
            files.append(os.path.join(root, "images", subset, file_names[image_id]))
    if not files:
        raise DataError(ids_path, f"lists no captions: the {split} split has no images")
    if check_files:
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(missing[0], f"missing image listed in {os.path.join(root, 'annotations')}{more}")
    return data.SplitData(split, captions, len(files), "files", files=files, source=os.path.join(root, "annotations"))


def _read_ids(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError(path, "no such file (the original code's COCO caption ids of this split)")
    try:
        ids = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable .npy array ({str(e).splitlines()[0]})") from None
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DataError(path, f"expected a 1-D integer array of caption ids, got shape {ids.shape} {ids.dtype}")
    return ids


def _read_coco_captions(path: str) -> tuple[dict[int, tuple[int, str]], dict[int, str]]:
    """COCO's captions file (plain JSON): caption id → (image id, caption), image id → file name."""
    if not os.path.isfile(path):
        raise DataError(path, "no such file (COCO's captions file)")
    doc = read_json(path)
    try:
        anns = {int(a["id"]): (int(a["image_id"]), str(a["caption"])) for a in doc["annotations"]}
        file_names = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
    except (KeyError, TypeError, ValueError):
        raise DataError(
            path,
            'malformed COCO captions file: expected {"images": [{"id", "file_name"}], '
            '"annotations": [{"id", "image_id", "caption"}]}',
        ) from None
    return anns, file_names
