"""Checkpoints: atomic writes, ``weights_only=True`` loads, and the RNG states of an exact resume.

A checkpoint holds only tensors, dicts, lists, numbers and strings (the vocabulary as a list of
words, the options as a dict) so that ``torch.load(path, weights_only=True)`` reads it. The
original VSE++ code's checkpoints (options as an ``argparse.Namespace``) are read the same way with
that one class allowed, and converted (``original.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import torch

from .errors import DataError

FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """A file to write ``path`` through: a temporary file beside it (``.tmp-*``, the umask's
    permissions), synced and renamed onto ``path`` when the block ends, removed if it fails —
    never a torn file, whatever interrupts the write. The directory is created if needed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` through :func:`atomic_file`: never a torn checkpoint."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def write_json(obj: Any, path: str) -> None:
    """``obj`` as indented JSON, through :func:`atomic_file`."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What a checkpoint must hold: for evaluate.py (and the final test), and for --resume.
EVALUATE_KEYS = ("model", "opt", "vocab", "epoch")
RESUME_KEYS = EVALUATE_KEYS + ("Eiters", "best_rsum", "optimizer", "rng")
_EXPECTED_TYPES = {"model": dict, "opt": dict, "vocab": list, "optimizer": dict, "rng": dict}

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6: a zip archive
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # older torch.save: pickle + magic number


def load(path: str, required=EVALUATE_KEYS, vocab_path: str | None = None) -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``weights_only=True`` (no code in it can run). A file
    that is not one raises DataError saying what it is instead: missing, empty, not a PyTorch
    file, truncated, holding objects other than tensors and plain values, or another kind of
    PyTorch file (a tensor, a bare state_dict, a dict without ``required``). A checkpoint of the
    original VSE++ code comes back converted (``source`` = ``"original"``; its vocabulary read from
    ``vocab_path``, see :func:`original.convert_checkpoint`), without an optimiser or RNG state."""
    from . import original

    obj = _torch_load(path)
    if original.is_original(obj):
        obj = original.convert_checkpoint(obj, path, vocab_path)
        required = tuple(k for k in required if k not in original.NOT_STORED)
    problem = _content_problem(obj, required)
    if problem:
        raise DataError(path, problem)
    return obj


def _torch_load(path: str) -> Any:
    if os.path.isdir(path):
        raise DataError(path, "a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise DataError(path, "no such checkpoint file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except OSError as e:
        raise DataError(path, f"cannot read it ({e.strerror})") from None
    if size == 0:
        raise DataError(path, "empty file (0 bytes), not a checkpoint")
    kind = _format(head)
    if kind is None:
        raise DataError(
            path,
            f"not a PyTorch checkpoint: neither the zip archive torch.save writes nor a pickle "
            f"({size} bytes starting with {head[:8]!r})",
        )
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise DataError(
            path,
            f"truncated or damaged PyTorch checkpoint: the zip archive has no end ({size} bytes); "
            "was the copy or the save cut short?",
        )
    try:
        try:
            return _weights_only_load(path, "utf-8")
        except Exception as e:  # noqa: BLE001 - a Python 2 pickle's byte strings that are not UTF-8
            if "UnicodeDecodeError" not in f"{type(e).__name__} {e}":
                raise
            return _weights_only_load(path, "latin1")
    except Exception as e:  # noqa: BLE001
        raise DataError(path, _load_failure(e, kind, size)) from None


def _weights_only_load(path: str, encoding: str) -> Any:
    """``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowed (the original code's
    options); ``encoding`` reads a Python 2 pickle's byte strings."""
    with warnings.catch_warnings(), _namespace_allowed():  # torch warns about pickle protocols before failing
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True, encoding=encoding)


def _namespace_allowed():
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        return safe_globals([argparse.Namespace])
    torch.serialization.add_safe_globals([argparse.Namespace])  # torch 2.4: no context manager yet
    return contextlib.nullcontext()


def _format(head: bytes) -> str | None:
    """``"zip"``, ``"legacy"`` (torch.save before torch 1.6), ``"pickle"`` (any other pickle) or None."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle's PROTO opcode
        return "pickle"
    return None


def _load_failure(e: Exception, kind: str, size: int) -> str:
    """What torch.load's failure on a file of ``kind`` means, in one line."""
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if refused:
        return (
            f"holds a Python object ({refused[1]}) that is not loaded: unpickling it could run code; "
            "train_coco.py checkpoints hold only tensors, dicts, lists, numbers and strings, and the original "
            "VSE++ code's an argparse.Namespace besides"
        )
    if isinstance(e, EOFError) or re.search(r"\bEOF\b|ran out of input", text, re.IGNORECASE):
        return f"truncated PyTorch checkpoint: the data ends early ({size} bytes); was the copy or the save cut short?"
    if kind == "pickle":
        return "a Python pickle, not a PyTorch checkpoint (not loaded: unpickling can run code)"
    reason = _first_line(text.split("WeightsUnpickler error:", 1)[-1]) or type(e).__name__
    if kind == "zip":
        return f"a zip archive but not a readable PyTorch checkpoint ({reason})"
    return f"damaged PyTorch checkpoint ({reason})"


def _first_line(text: str, limit: int = 200) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:limit]


def _content_problem(obj: Any, required) -> str | None:
    """Why ``obj``, loaded from a PyTorch file, is not a train_coco.py checkpoint (None if it is)."""
    wanted = ", ".join(map(repr, required))
    if not isinstance(obj, dict):
        what = f"a tensor of shape {tuple(obj.shape)}" if isinstance(obj, torch.Tensor) else f"a {type(obj).__name__}"
        return f"a PyTorch file holding {what}, not a train_coco.py checkpoint (a dict with {wanted})"
    missing = [k for k in required if k not in obj]
    if missing:
        found = ", ".join(map(repr, list(obj)[:6])) + (", ..." if len(obj) > 6 else "") if obj else "nothing"
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            found += ": a bare state_dict?"
        return f"missing keys {', '.join(map(repr, missing))}: not a train_coco.py checkpoint (it holds {found})"
    for key, kind in _EXPECTED_TYPES.items():
        if key in required and not isinstance(obj[key], kind):
            got = type(obj[key]).__name__
            return f"its {key!r} entry is a {got}, not a {kind.__name__}: not a train_coco.py checkpoint"
    return None


def load_weights(model: torch.nn.Module, ckpt: dict[str, Any], path: str, hint: str = "") -> None:
    """``model.load_state_dict(ckpt["model"])``; weights that do not fit (other sizes, other
    encoders) raise DataError naming ``path`` and the first mismatch."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # "Error(s) in loading state_dict for VSEModel:" then one line per problem
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = (lines[1:] or lines or [type(e).__name__])[0][:300]
        raise DataError(path, f"its weights do not fit the model its options describe ({detail}){hint}") from None


def plain_options(opt) -> dict[str, Any]:
    """The options as a dict of plain values (what a weights_only checkpoint may hold)."""
    out = {}
    for k, v in vars(opt).items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = list(v)
    return out


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
