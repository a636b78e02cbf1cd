"""Files in the formats of the original VSE++ code (github.com/fartashf/vsepp), written here.

- :func:`save_checkpoint`: ``torch.save`` of the original's dict (``model`` = [image encoder
  state_dict, text encoder state_dict], ``opt`` an ``argparse.Namespace``, ``epoch``,
  ``best_rsum``, ``Eiters``) in torch's zip format, its legacy format, or the legacy format as
  Python 2 and torch 0.3 wrote it (byte strings, OrderedDicts as lists of pairs, tensors rebuilt by
  ``torch._utils._rebuild_tensor``, CUDA storages saved on ``cuda:0``).
- :func:`save_vocab`: a pickled ``Vocabulary`` (``word2idx``, ``idx2word``, ``idx``) of a small
  class named like the original's, under module ``vocab`` or ``__main__``, Python 3 or 2.
- :func:`original_coco_tree`: ``coco/annotations/coco_*_ids.npy``, ``captions_*2014.json`` and
  ``images/{train,val}2014``.
"""

import argparse
import contextlib
import io
import json
import os
import pickle
import struct
import sys
import types
import warnings
from collections import OrderedDict

import numpy as np
import torch


class Vocabulary:
    """The original ``vocab.Vocabulary``'s state: word2idx, idx2word, idx (its module is set when pickling)."""

    def __init__(self, words):
        self.word2idx, self.idx2word, self.idx = {}, {}, 0
        for w in words:
            if w not in self.word2idx:
                self.word2idx[w], self.idx2word[self.idx] = self.idx, w
                self.idx += 1


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 with torch 0.3 did: ``str`` as byte strings (UTF-8; ``bytes`` as they
    are, short ones only), OrderedDict as
    ``OrderedDict([[k, v], ...])``, tensors as ``_rebuild_tensor(storage, offset, size, stride)``,
    storages of ``torch.cuda`` types located on ``cuda:0``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes_str(self, obj):
        b = obj.encode("utf-8")
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = save_bytes_str

    def save_raw_bytes(self, obj):  # a Python 2 str that is not UTF-8 (Latin-1 text, say)
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_raw_bytes

    def reducer_override(self, obj):
        if type(obj) is OrderedDict:
            return OrderedDict, ([[k, v] for k, v in obj.items()],)
        if isinstance(obj, torch.Tensor):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                storage = obj.storage()
            return torch._utils._rebuild_tensor, (storage, obj.storage_offset(), tuple(obj.size()), obj.stride())
        return NotImplemented

    def save_pers(self, pid):
        if isinstance(pid, tuple) and pid and pid[0] == "storage":  # say the storages were on the GPU
            pid = (pid[0], getattr(torch.cuda, pid[1].__name__), pid[2], "cuda:0") + pid[4:]
        super().save_pers(pid)


class Py2PickleModule:
    """What ``torch.save(pickle_module=)`` needs of a pickle module."""

    Pickler = Py2Pickler

    @staticmethod
    def dump(obj, f, protocol=2):
        Py2Pickler(f, protocol).dump(obj)


def save_checkpoint(path, img_state, txt_state, opt, fmt="zip", epoch=3, best_rsum=123.4, eiters=57, extra=None):
    """The original's checkpoint dict, saved in ``fmt``: ``zip``, ``legacy`` or ``py2``."""
    obj = {
        "epoch": epoch,
        "model": [OrderedDict(img_state), OrderedDict(txt_state)],
        "best_rsum": best_rsum,
        "opt": argparse.Namespace(**opt),
        "Eiters": eiters,
    }
    obj.update(extra or {})
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=False, pickle_module=Py2PickleModule, pickle_protocol=2)


@contextlib.contextmanager
def _class_at(module_name, cls):
    """``cls`` importable as ``module_name.Vocabulary`` while pickling (pickle looks it up)."""
    module = sys.modules.get(module_name) or types.ModuleType(module_name)
    added = module_name not in sys.modules
    sys.modules[module_name] = module
    old_module, old_attr = cls.__module__, getattr(module, "Vocabulary", None)
    cls.__module__, module.Vocabulary = module_name, cls
    try:
        yield
    finally:
        cls.__module__ = old_module
        if old_attr is None:
            del module.Vocabulary
        else:
            module.Vocabulary = old_attr
        if added:
            del sys.modules[module_name]


def save_vocab(path, words, module="vocab", py2=False):
    """The original's vocabulary pickle: ``module.Vocabulary`` (``vocab`` when vocab.py is imported,
    ``__main__`` when it ran as the script that wrote the file), highest protocol of Python 3, or
    protocol 2 with byte strings as Python 2 wrote it."""
    vocab = Vocabulary(words)
    buf = io.BytesIO()
    with _class_at(module, Vocabulary):
        if py2:
            Py2Pickler(buf, 2).dump(vocab)
        else:
            pickle.dump(vocab, buf, pickle.HIGHEST_PROTOCOL)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return vocab


def original_coco_tree(root, captions_of, sizes, side=40, seed=0):
    """``{root}/coco`` in the original layout. ``sizes``: split → number of images (train, dev,
    test, restval); ``captions_of(rng)`` gives one image's captions (5, or more: then the ids list
    the first 5, as the original's ids files do). Returns split → list of (file, [captions])."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = os.path.join(root, "coco")
    subsets = {"train": "train2014", "dev": "val2014", "test": "val2014", "restval": "val2014"}
    docs = {s: {"images": [], "annotations": []} for s in ("train2014", "val2014")}
    ids = {}
    layout = {}
    image_id, ann_id = 100, 5000
    for split, n in sizes.items():
        subset = subsets[split]
        folder = os.path.join(base, "images", subset)
        os.makedirs(folder, exist_ok=True)
        ids[split] = []
        layout[split] = []
        for _ in range(n):
            name = f"COCO_{subset}_{image_id:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)).save(
                os.path.join(folder, name), quality=95
            )
            docs[subset]["images"].append({"id": image_id, "file_name": name, "width": side, "height": side})
            caps = captions_of(rng)
            for k, c in enumerate(caps):
                docs[subset]["annotations"].append({"id": ann_id, "image_id": image_id, "caption": c})
                if k < 5:
                    ids[split].append(ann_id)
                ann_id += 7
            layout[split].append((os.path.join(folder, name), caps[:5]))
            image_id += 3
    ann = os.path.join(base, "annotations")
    os.makedirs(ann, exist_ok=True)
    for subset, doc in docs.items():
        rng.shuffle(doc["annotations"])  # the ids files give the order, not the JSON
        with open(os.path.join(ann, f"captions_{subset}.json"), "w") as f:
            json.dump(doc, f)
    for split, values in ids.items():
        np.save(os.path.join(ann, f"coco_{split}_ids.npy"), np.array(values, dtype=np.int64))
    return layout
