"""Retrieval metrics by the VSE++ paper's protocol (the original ``evaluation.py``'s i2t / t2i).

``images`` is N×D, ``captions`` is 5N×D with captions 5i..5i+4 belonging to image i.

- image→text: the rank of an image is the best rank among its 5 captions;
- text→image: the rank of a caption is the rank of its one image;
- R@K is the percentage of queries with rank < K (ranks start at 0), ``medr`` is
  ``floor(median(rank)) + 1`` and ``meanr`` is ``mean(rank) + 1``; ``rsum`` adds the six R@K.

Ties are broken against the query: a candidate scoring *exactly* as high as the best positive
counts as ranked above it (so a collapsed model, where every score is equal, gets the worst rank
rather than a perfect one). The original's ``argsort`` left ties in an arbitrary order.

The score of an image and a caption is their dot product (``--measure cosine``: the model
normalises its embeddings), or with ``--measure order`` the order embeddings' −‖max(0, c − im)‖₂
(``vse_losses.OrderSimilarity``), as the original's ``order_sim``.

COCO 1K: the 5000 test images split into 5 folds of 1000, metrics averaged over the folds;
5K: the whole set, reported with keys prefixed ``5k_``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import data
from .errors import DataError

CAPS = 5
KEYS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "i2t_medr",
    "i2t_meanr",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "t2i_medr",
    "t2i_meanr",
    "rsum",
)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


MEASURES = ("cosine", "order")


def scores(im: torch.Tensor, cap: torch.Tensor, measure: str = "cosine") -> torch.Tensor:
    """The (images, captions) score matrix of ``measure`` (module docstring)."""
    if measure == "order":
        from vse_losses.functional import order_scores

        return order_scores(im, cap, "chunked")  # rows in chunks: never the (images, captions, D) block
    return im @ cap.T


def ranks(images, captions, chunk: int = 1000, measure: str = "cosine"):
    """(i2t ranks of the N images, t2i ranks of the 5N captions), 0-based, by ``measure``."""
    im = _as_tensor(images).float()
    cap = _as_tensor(captions).float()
    n = im.shape[0]
    if cap.shape[0] != CAPS * n:
        raise ValueError(f"{cap.shape[0]} caption embeddings for {n} images: expected {CAPS * n}")
    owner = torch.arange(CAPS * n) // CAPS  # image of each caption
    i2t = torch.empty(n, dtype=torch.long)
    pos_t2i = torch.empty(CAPS * n, dtype=cap.dtype)  # each caption's score with its own image
    chunks = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    for start, stop in chunks:  # pass 1: i2t ranks, and the positives of t2i from the same products
        sims = scores(im[start:stop], cap, measure)  # chunk × 5N
        own = owner[None, :] == torch.arange(start, stop)[:, None]
        best = sims.masked_fill(~own, -math.inf).max(1).values
        i2t[start:stop] = (sims.masked_fill(own, -math.inf) >= best[:, None]).sum(1)
        cols = slice(CAPS * start, CAPS * stop)
        pos_t2i[cols] = sims[:, cols][own[:, cols]]
    t2i = torch.zeros(CAPS * n, dtype=torch.long)
    for start, stop in chunks:  # pass 2: t2i ranks
        sims = scores(im[start:stop], cap, measure)
        own = owner[None, :] == torch.arange(start, stop)[:, None]
        t2i += ((sims >= pos_t2i[None, :]) & ~own).sum(0)
    return i2t.numpy(), t2i.numpy()


def recall(r: np.ndarray, prefix: str) -> dict[str, float]:
    r = np.asarray(r)
    return {
        f"{prefix}_r1": 100.0 * float(np.mean(r < 1)),
        f"{prefix}_r5": 100.0 * float(np.mean(r < 5)),
        f"{prefix}_r10": 100.0 * float(np.mean(r < 10)),
        f"{prefix}_medr": float(np.floor(np.median(r)) + 1),
        f"{prefix}_meanr": float(np.mean(r) + 1),
    }


def metrics(images, captions, measure: str = "cosine") -> dict[str, float]:
    """All of :data:`KEYS` for one set of N images and 5N captions."""
    i2t, t2i = ranks(images, captions, measure=measure)
    out = {**recall(i2t, "i2t"), **recall(t2i, "t2i")}
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return {k: out[k] for k in KEYS}


def fold5_problem(n_images: int) -> str | None:
    """Why ``n_images`` images cannot be split into the 1K protocol's folds (None if they can)."""
    if n_images % 1000 or n_images < 2000:
        return f"--fold5 needs folds of 1000 images (COCO's 5000 test images); this split has {n_images}"
    return None


def evaluate_embeddings(images, captions, fold5: bool | None = None, measure: str = "cosine") -> dict[str, float]:
    """The paper's figures: the 1K metrics (mean over folds of 1000 images when ``fold5``), then the
    whole set under keys prefixed ``5k_`` (``{N/1000}k_`` for other sizes).

    ``fold5=None`` means: folds exactly when there are 5000 images (COCO's test split); ``measure``:
    the score of an image and a caption (:func:`scores`).
    """
    im, cap = _as_tensor(images), _as_tensor(captions)
    n = im.shape[0]
    if fold5 is None:
        fold5 = n == 5000
    if not fold5:
        return metrics(im, cap, measure)
    problem = fold5_problem(n)
    if problem:
        raise ValueError(problem)
    folds = [
        metrics(im[i * 1000 : (i + 1) * 1000], cap[CAPS * i * 1000 : CAPS * (i + 1) * 1000], measure)
        for i in range(n // 1000)
    ]
    out = {k: float(np.mean([f[k] for f in folds])) for k in KEYS}
    out.update({f"{n // 1000}k_{k}": v for k, v in metrics(im, cap, measure).items()})
    return out


def format_table(m: dict[str, float], title: str = "") -> str:
    """The table train_coco.py and evaluate.py print: a row per direction, then rsum."""
    lines = []
    prefixes = [""] + sorted({k[: k.index("k_") + 2] for k in m if k.endswith("k_rsum")})
    for prefix in prefixes:
        lines.append(f"{title or 'test'}:" if prefix == "" else f"{prefix[:-2].upper()}K (all images):")
        lines.append(f"{'':<14}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'medr':>8}{'meanr':>8}")
        for d, name in (("i2t", "image→text"), ("t2i", "text→image")):
            vals = [m[f"{prefix}{d}_{k}"] for k in ("r1", "r5", "r10", "medr", "meanr")]
            lines.append(f"{name:<14}" + "".join(f"{v:8.1f}" for v in vals))
        lines.append(f"{'rsum':<14}{m[f'{prefix}rsum']:8.1f}")
    return "\n".join(lines)


def evaluate_split(model, split: data.SplitData, tokenizer, opt, device, fold5=None) -> dict[str, float]:
    """:func:`evaluate_embeddings` of ``model`` on ``split`` (``opt``: batch size, workers, crop size,
    measure; a checkpoint from before ``--measure`` was stored: cosine)."""
    if split.n_images == 0:  # torch.cat of no embeddings would fail with a traceback
        raise DataError(split.source, f"the {split.name} split has no images")
    workers = opt.workers if split.kind == "files" else 0
    images, captions = data.eval_loaders(split, tokenizer, opt.batch_size, workers, opt.crop_size)
    ims, caps = encode(model, images, captions, device)
    return evaluate_embeddings(ims, caps, fold5, getattr(opt, "measure", "cosine"))


@torch.no_grad()
def encode(model, image_loader, caption_loader, device) -> tuple:
    """Embeddings of every image (once each) and every caption, in data order."""
    was_training = model.training
    model.eval()
    ims, caps = [], []
    for images, _ in image_loader:
        ims.append(model.img_enc(images.to(device)).float().cpu())
    for text, _ in caption_loader:
        caps.append(model.txt_enc({k: v.to(device) for k, v in text.items()}).float().cpu())
    model.train(was_training)
    return torch.cat(ims), torch.cat(caps)
