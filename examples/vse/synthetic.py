"""The embedded dataset: small images of coloured shapes with five differently worded captions.

Generated on the fly, deterministic from a seed (NumPy's PCG64), in a few seconds, then cached
as one ``.npz`` file. Every image holds 2 or 3 objects, each with a shape, a colour, a size and a
cell of a 3×3 grid; every caption mentions every attribute of every object, so two images can
only be told apart by a caption when their *descriptions* (the set of objects) differ.

Hard negatives are built in: images come in families of ``family_size`` — a base scene and
variants that each change exactly one attribute of one object — and a family never straddles a
split, so most test images have a test image whose captions differ from theirs in one word.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .checkpoint import atomic_file
from .errors import ConfigError

GENERATOR_VERSION = 1

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (225, 35, 35),
    "green": (40, 190, 55),
    "blue": (45, 85, 235),
    "yellow": (235, 220, 40),
    "purple": (165, 55, 210),
    "cyan": (40, 205, 215),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
CELLS = tuple((r, c) for r in range(3) for c in range(3))

SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}

# An object is (shape, colour, size, cell index); a description is the sorted tuple of its objects.
Obj = tuple[int, int, int, int]


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    n_train: int = 10000
    n_dev: int = 1000
    n_test: int = 1000
    image_size: int = 32
    family_size: int = 4

    def key(self) -> str:
        blob = json.dumps({"v": GENERATOR_VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- scenes


def _random_scene(rng: np.random.Generator) -> tuple[Obj, ...]:
    n = int(rng.integers(2, 4))
    cells = rng.choice(len(CELLS), size=n, replace=False)
    attrs = rng.integers(0, (len(SHAPES), len(COLOURS), len(SIZES)), size=(n, 3))
    return tuple(sorted((int(a[0]), int(a[1]), int(a[2]), int(cell)) for a, cell in zip(attrs, cells)))


def one_attribute_variants(scene: Sequence[Obj]) -> list[tuple[Obj, ...]]:
    """Every description that differs from ``scene`` in exactly one attribute of one object."""
    out = []
    used = {o[3] for o in scene}
    for i, obj in enumerate(scene):
        ranges = (
            range(len(SHAPES)),
            range(len(COLOURS)),
            range(len(SIZES)),
            [c for c in range(len(CELLS)) if c not in used],
        )
        for attr, values in enumerate(ranges):
            for v in values:
                if v == obj[attr]:
                    continue
                new = list(obj)
                new[attr] = v
                out.append(tuple(sorted(scene[:i] + (tuple(new),) + tuple(scene[i + 1 :]))))
    return out


def _family(rng: np.random.Generator, size: int) -> list[tuple[Obj, ...]]:
    base = _random_scene(rng)
    variants = one_attribute_variants(base)
    picks = rng.choice(len(variants), size=min(size - 1, len(variants)), replace=False)
    return [base] + [variants[int(p)] for p in picks]


def make_descriptions(rng: np.random.Generator, n: int, family_size: int) -> list[tuple[Obj, ...]]:
    scenes: list[tuple[Obj, ...]] = []
    while len(scenes) < n:
        scenes.extend(_family(rng, family_size))
    return scenes[:n]


# ----------------------------------------------------------------------------- rendering


def render(scene: Sequence[Obj], rng: np.random.Generator, size: int) -> np.ndarray:
    """An ``size``×``size``×3 uint8 image of ``scene`` on a noisy dark background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = np.full((size, size, 3), rng.uniform(0, 45), dtype=np.float32)
    img += rng.normal(0, 8, size=img.shape)
    cell = size / 3.0
    for shape, colour, sz, cell_idx in scene:
        r = (0.24 if sz == 0 else 0.42) * cell
        slack = max(cell / 2 - r - 0.5, 0.0)
        row, col = CELLS[cell_idx]
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        dx, dy = xx - cx, yy - cy
        if SHAPES[shape] == "circle":
            mask = dx * dx + dy * dy <= r * r
        elif SHAPES[shape] == "square":
            mask = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
        elif SHAPES[shape] == "triangle":
            t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
            mask = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
        else:  # cross
            arm = max(r / 3, 0.75)
            mask = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
        rgb = np.array(COLOURS[COLOUR_NAMES[colour]], dtype=np.float32) + rng.uniform(-20, 20, size=3)
        img[mask] = rgb
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions


def _position(cell_idx: int, rng: np.random.Generator) -> str:
    row, col = CELLS[cell_idx]
    horiz = ["left", None, "right"][col]
    if horiz is None:
        vert = ["top", None, "bottom"][row]
    else:
        vert = [str(rng.choice(["top", "upper"])), None, str(rng.choice(["bottom", "lower"]))][row]
    if vert is None and horiz is None:
        return str(rng.choice(["center", "middle"]))
    return " ".join(w for w in (vert, horiz) if w)


def _where(cell_idx: int, rng: np.random.Generator) -> str:
    pos = _position(cell_idx, rng)
    if " " in pos and rng.random() < 0.5:
        pos += " corner"
    prep = "on the" if pos in ("left", "right") else str(rng.choice(["in the", "at the"]))
    return f"{prep} {pos}"


def _words(obj: Obj, rng: np.random.Generator):
    shape, colour, size, cell = obj
    return (
        str(rng.choice(SIZE_WORDS[SIZES[size]])),
        COLOUR_NAMES[colour],
        str(rng.choice(SHAPE_WORDS[SHAPES[shape]])),
        cell,
    )


def captions_for(scene: Sequence[Obj], rng: np.random.Generator) -> list[str]:
    """Five captions, one per template, each listing the objects in its own random order."""

    def objs():
        order = rng.permutation(len(scene))
        return [_words(scene[i], rng) for i in order]

    n = len(scene)
    caps = []
    caps.append(" and ".join(f"a {s} {c} {sh} {_where(p, rng)}" for s, c, sh, p in objs()))
    caps.append("there is " + " , ".join(f"a {c} {sh} that is {s} {_where(p, rng)}" for s, c, sh, p in objs()))
    caps.append(
        f"{COUNT_WORDS[n]} shapes : " + " ; ".join(f"{c} {sh} , {s} , {_position(p, rng)}" for s, c, sh, p in objs())
    )
    caps.append(" . ".join(f"{_position(p, rng)} : a {s} {c} {sh}" for s, c, sh, p in objs()))
    parts = [f"{s} {c} {sh} {_where(p, rng)}" for s, c, sh, p in objs()]
    caps.append(
        str(rng.choice(["a picture of", "an image showing", "a drawing with"]))
        + " "
        + " , ".join(parts[:-1])
        + " and "
        + parts[-1]
    )
    return caps


# ----------------------------------------------------------------------------- dataset


def generate(cfg: SyntheticConfig) -> dict[str, dict]:
    """``{split: {"images": N×S×S×3 uint8, "captions": [5N str], "descriptions": [N tuples]}}``."""
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for split, n in (("train", cfg.n_train), ("dev", cfg.n_dev), ("test", cfg.n_test)):
        scenes = make_descriptions(rng, n, cfg.family_size)
        images = (
            np.stack([render(s, rng, cfg.image_size) for s in scenes])
            if n
            else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
        )
        captions = [c for s in scenes for c in captions_for(s, rng)]
        out[split] = {"images": images, "captions": captions, "descriptions": scenes}
    return out


def default_cache_dir() -> str:
    return os.environ.get(
        "VSE_DATA_CACHE", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_cache")
    )


def load(cfg: SyntheticConfig, cache_dir: str | None = None, log=print) -> dict[str, dict]:
    """Generate the dataset (or read it back from ``cache_dir``) for ``cfg``."""
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"synthetic_{cfg.key()}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                out = {}
                for split in ("train", "dev", "test"):
                    out[split] = {
                        "images": z[f"{split}_images"],
                        "captions": [str(c) for c in z[f"{split}_captions"]],
                        "descriptions": [tuple(tuple(o) for o in d) for d in meta[split]],
                    }
            return out
        except Exception:  # a corrupt cache file is regenerated
            log(f"notice: ignoring the unreadable cache file {path}")
    try:  # before generating: a cache that cannot be written is said at once
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            cache_dir,
            f"cannot create the embedded dataset's cache directory ({e.strerror}); "
            "choose another with --data_cache or VSE_DATA_CACHE",
        ) from None
    data = generate(cfg)
    arrays = {}
    for split, d in data.items():
        arrays[f"{split}_images"] = d["images"]
        arrays[f"{split}_captions"] = np.array(d["captions"], dtype=str)
    arrays["meta"] = np.array(json.dumps({s: [list(map(list, x)) for x in d["descriptions"]] for s, d in data.items()}))
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)
    return data


def best_recall_at_1(descriptions: Sequence[tuple]) -> float:
    """Best R@1 (%) any model can reach, in either direction, when ties are broken at random.

    Images with identical descriptions cannot be told apart by their captions: a caption whose
    description is shared by k images finds its own image first with probability 1/k, and an
    image ranks one of its own 5 captions first among the 5k equally good ones with probability
    1/k. Averaged over images this is (number of distinct descriptions) / (number of images).
    """
    if not descriptions:
        return 0.0
    return 100.0 * len(set(descriptions)) / len(descriptions)


def hard_negative_rate(descriptions: Sequence[tuple]) -> float:
    """% of images with another image in the set whose description differs in one attribute."""
    present = set(descriptions)
    hits = sum(any(v in present for v in one_attribute_variants(d)) for d in descriptions)
    return 100.0 * hits / max(len(descriptions), 1)


def describe(desc: Sequence[Obj]) -> str:
    return " ; ".join(f"{SIZES[s]} {COLOUR_NAMES[c]} {SHAPES[sh]} at {_position_plain(p)}" for sh, c, s, p in desc)


def _position_plain(cell_idx: int) -> str:
    row, col = CELLS[cell_idx]
    return ["top ", "", "bottom "][row] + ["left", "center", "right"][col] if (row, col) != (1, 1) else "center"
