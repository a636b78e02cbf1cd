"""Checkpoints: atomic writes, ``weights_only=True`` loads, and the RNG states of an exact resume.

A checkpoint holds only tensors, dicts, lists, numbers and strings (the vocabulary as a list of
words, the options as a dict) so that ``torch.load(path, weights_only=True)`` reads it.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from typing import Any, Dict, Iterator, IO

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


def load(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise DataError(path, "no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(path, f"not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "opt" not in ckpt:
        raise DataError(path, "not a train_coco.py checkpoint (no 'model' or 'opt' entry)")
    return ckpt


def plain_options(opt) -> Dict[str, Any]:
    """The options as a dict of plain values (what a weights_only checkpoint may hold)."""
    out = {}
    for k, v in vars(opt).items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = list(v)
    return out


def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(state), "gauss": gauss},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
