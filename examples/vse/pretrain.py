"""The embedded data's "ImageNet": the small CNN pretrained to name what its images show.

The paper's VSE++ starts from a CNN trained on ImageNet, whose images are not COCO's. Here the
``smallcnn`` is trained, before any retrieval, on *other* generated images of the embedded
dataset's kind to recognise their objects' attributes: a multi-label classification with one
label per (grid cell, attribute value) — 9 cells × (4 shapes + 6 colours + 2 sizes) = 108 labels,
a label on when the object in that cell has that value, binary cross-entropy on each.

Disjoint from the retrieval splits, by construction: the scenes and their renderings come from
their own random stream (NumPy PCG64 seeded by ``SeedSequence([PRETRAIN_STREAM, pretrain_seed])``,
never the retrieval data's ``SeedSequence(data_seed)``), and every scene whose description occurs
in the retrieval dataset's train, dev or test split is dropped and drawn again, so no pretraining
image shows a scene that any retrieval image shows.

Deterministic from its settings: the weights are a function of :class:`PretrainConfig` (and the
retrieval dataset's, for the exclusion), computed on the CPU under a forked torch RNG (the
caller's random streams are left as they were), and cached as a ``state_dict`` beside the
dataset cache, keyed by those settings and written atomically. The same machine, torch build
and thread count give the same bits.

The precomputed features of ``--data_name synthetic_precomp`` are the pretrained CNN's output
(its ``fc`` layer, 512-d) on the retrieval images, in eval mode: the original release's
``*_precomp`` features in miniature (there, VGG19's or ResNet152's fc features of COCO images).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import synthetic
from .checkpoint import atomic_file, atomic_save
from .data import IMAGENET_MEAN, IMAGENET_STD

PRETRAIN_VERSION = 1
PRETRAIN_STREAM = 0x1A6E7  # the pretraining data's own seed stream (its entropy's first word)
N_LABELS = len(synthetic.CELLS) * (len(synthetic.SHAPES) + len(synthetic.COLOURS) + len(synthetic.SIZES))


@dataclass(frozen=True)
class PretrainConfig:
    """The pretraining's settings (the first three are train_coco.py's ``--pretrain_*``)."""

    seed: int
    n_images: int
    epochs: int
    batch_size: int = 128
    learning_rate: float = 2e-3
    image_size: int = 32

    def key(self, data: synthetic.SyntheticConfig) -> str:
        blob = json.dumps({"v": PRETRAIN_VERSION, **asdict(self), "data": data.key()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def config(opt) -> PretrainConfig:
    return PretrainConfig(
        seed=opt.pretrain_seed,
        n_images=opt.pretrain_images,
        epochs=opt.pretrain_epochs,
        image_size=opt.synthetic_size,
    )


def applies(opt) -> bool:
    """Whether ``opt`` starts from the pretrained CNN: the embedded data, ``--cnn_type smallcnn``,
    no ``--cnn_weights`` of the user's and no ``--from_scratch``."""
    return (
        opt.data_name == "synthetic"
        and opt.cnn_type == "smallcnn"
        and not getattr(opt, "from_scratch", False)
        and (not opt.cnn_weights or opt.cnn_weights == weights_path(opt))
    )


# ----------------------------------------------------------------------------- data and labels


def labels(scene) -> np.ndarray:
    """The 108 multi-hot labels of one scene: for the object in cell c, its shape, colour and size."""
    y = np.zeros((len(synthetic.CELLS), len(synthetic.SHAPES) + len(synthetic.COLOURS) + len(synthetic.SIZES)))
    for shape, colour, size, cell in scene:
        y[cell, shape] = 1
        y[cell, len(synthetic.SHAPES) + colour] = 1
        y[cell, len(synthetic.SHAPES) + len(synthetic.COLOURS) + size] = 1
    return y.reshape(-1).astype(np.float32)


def pretraining_set(cfg: PretrainConfig, excluded: set) -> tuple[np.ndarray, np.ndarray, list]:
    """``cfg.n_images`` images (N×S×S×3 uint8), their labels (N×108) and descriptions, drawn from
    the pretraining stream; no description is in ``excluded`` (the retrieval splits')."""
    rng = np.random.default_rng(np.random.SeedSequence([PRETRAIN_STREAM, cfg.seed]))
    scenes = []
    while len(scenes) < cfg.n_images:
        scene = synthetic._random_scene(rng)
        if scene not in excluded:
            scenes.append(scene)
    images = np.stack([synthetic.render(s, rng, cfg.image_size) for s in scenes])
    return images, np.stack([labels(s) for s in scenes]), scenes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N×S×S×3 uint8 → N×3×S×S float, normalised as ``data.ImageTransform`` does for the embedded data."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def excluded_descriptions(dataset: dict) -> set:
    return {d for split in dataset.values() for d in split["descriptions"]}


# ----------------------------------------------------------------------------- training


def train(cfg: PretrainConfig, excluded: set, log=print) -> tuple[dict, dict]:
    """The pretrained ``SmallCNN``'s state_dict and a summary: the share of held-out images of the
    pretraining stream (min(1000, n_images/10) more, excluded alike) with all 108 labels right, the
    share of labels right, the wall and CPU seconds."""
    from .model import SmallCNN

    t0, c0 = time.time(), time.process_time()
    n_heldout = min(1000, max(cfg.n_images // 10, 1))
    images, y, _ = pretraining_set(PretrainConfig(**{**asdict(cfg), "n_images": cfg.n_images + n_heldout}), excluded)
    x = to_tensor(images)
    y = torch.from_numpy(y)
    x_train, y_train, x_held, y_held = x[:-n_heldout], y[:-n_heldout], x[-n_heldout:], y[-n_heldout:]
    with torch.random.fork_rng(devices=[]):  # the caller's torch RNG is left as it was
        torch.manual_seed(cfg.seed)
        cnn = SmallCNN(in_size=cfg.image_size)
        head = nn.Linear(cnn.out_dim, N_LABELS)
        params = list(cnn.parameters()) + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
        gen = torch.Generator().manual_seed(cfg.seed)
        steps = cfg.epochs * -(-len(x_train) // cfg.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.learning_rate, total_steps=max(steps, 1))
        cnn.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                loss = F.binary_cross_entropy_with_logits(head(cnn(x_train[idx])), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
            log(f"pretraining epoch {epoch + 1}/{cfg.epochs}: loss {total / len(x_train):.4f}")
        cnn.eval()
        with torch.no_grad():
            pred = torch.cat([head(cnn(x_held[i : i + 500])) for i in range(0, len(x_held), 500)]) > 0
    exact = (pred == (y_held > 0)).all(1).float().mean().item()
    bit = (pred == (y_held > 0)).float().mean().item()
    summary = {
        "heldout_exact_match": exact,
        "heldout_label_accuracy": bit,
        "seconds": time.time() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    return cnn.state_dict(), summary


# ----------------------------------------------------------------------------- the cache


def _data_config(opt) -> synthetic.SyntheticConfig:
    from .data import synthetic_config

    return synthetic_config(opt)


def _cache_dir(opt) -> str:
    return getattr(opt, "data_cache", None) or synthetic.default_cache_dir()


def weights_path(opt) -> str:
    return os.path.join(_cache_dir(opt), f"pretrained_smallcnn_{config(opt).key(_data_config(opt))}.pth")


def ensure_weights(opt, log=print) -> str:
    """The path of the pretrained CNN's state_dict for ``opt``, pretraining it first if it is not cached."""
    path = weights_path(opt)
    if os.path.isfile(path):
        return path
    cfg = config(opt)
    log(
        f"pretraining the smallcnn on {cfg.n_images} generated images disjoint from the retrieval splits "
        f"({cfg.epochs} epochs, seed {cfg.seed}; cached as {path})"
    )
    dataset = synthetic.load(_data_config(opt), _cache_dir(opt), log=log)
    state, summary = train(cfg, excluded_descriptions(dataset), log=log)
    atomic_save(state, path)
    log(
        f"pretrained in {summary['seconds']:.0f} s ({summary['cpu_seconds']:.0f} s of CPU): held-out images, "
        "every label right "
        f"{100 * summary['heldout_exact_match']:.1f}%, labels right {100 * summary['heldout_label_accuracy']:.2f}%"
    )
    return path


def use_pretrained_cnn(opt, log=print) -> None:
    """Point ``opt.cnn_weights`` at the pretrained CNN when it applies (pretraining it on first use)."""
    if applies(opt):
        opt.cnn_weights = ensure_weights(opt, log=log)


def load_cnn(opt, log=print):
    """The pretrained ``SmallCNN``, in eval mode."""
    from .model import SmallCNN

    cnn = SmallCNN(in_size=opt.synthetic_size)
    cnn.load_state_dict(torch.load(ensure_weights(opt, log=log), map_location="cpu", weights_only=True))
    return cnn.eval()


# ----------------------------------------------------------------------------- precomputed features


def features_path(opt) -> str:
    return os.path.join(_cache_dir(opt), f"synthetic_precomp_{config(opt).key(_data_config(opt))}.npz")


@torch.no_grad()
def encode(cnn: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The CNN's fc features of N×S×S×3 uint8 images (N×512 float32)."""
    out = [cnn(to_tensor(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, cnn.out_dim), np.float32)


def load_features(opt, log=print) -> dict[str, np.ndarray]:
    """``{split: N×512 features}`` of the embedded dataset's train, dev and test images, computed by
    the pretrained CNN on first use and cached (atomically, keyed like the weights)."""
    path = features_path(opt)
    if os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {split: z[split] for split in ("train", "dev", "test")}
        except Exception:  # noqa: BLE001 - a corrupt cache file is computed again
            log(f"notice: ignoring the unreadable cache file {path}")
    cnn = load_cnn(opt, log=log)
    dataset = synthetic.load(_data_config(opt), _cache_dir(opt), log=log)
    t0 = time.time()
    feats = {split: encode(cnn, d["images"]) for split, d in dataset.items()}
    with atomic_file(path, "wb") as f:
        np.savez(f, **feats)
    log(
        f"synthetic_precomp: the pretrained smallcnn's {cnn.out_dim}-d features, {time.time() - t0:.0f} s; "
        f"cached as {path}"
    )
    return feats
