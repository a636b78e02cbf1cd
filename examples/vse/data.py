"""Data: the three layouts train_coco.py reads, as (image, caption) pair datasets.

- ``{data_path}/{name}_precomp/{split}_ims.npy`` + ``{split}_caps.txt``: precomputed features,
  one caption per line, 5 per image in image order (the original VSE++ release);
- ``{data_path}/{coco,f30k,f8k}/dataset_{coco,flickr30k,flickr8k}.json`` (Karpathy splits) with
  the images under ``{data_path}/{name}/images/`` (COCO: ``images/{filepath}/{filename}``);
- the embedded synthetic dataset (``synthetic.py``) when no ``--data_path`` is given.

Every problem with the data raises :class:`DataError` naming the file at fault.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import original, synthetic
from .errors import ConfigError, DataError, read_json

CAPS_PER_IMAGE = 5
RAW_DATASETS = {"coco": "dataset_coco.json", "f30k": "dataset_flickr30k.json", "f8k": "dataset_flickr8k.json"}
SPLITS = ("train", "dev", "test", "testall")
KARPATHY_SPLIT = {"train": ("train",), "dev": ("val",), "test": ("test",), "testall": ("test",)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layout(data_name: str) -> str:
    """``"precomp"``, ``"raw"`` or ``"synthetic"`` for a ``--data_name``; DataError if unknown."""
    if data_name in ("synthetic", "synthetic_precomp"):
        return "synthetic"
    if data_name == "precomp" or data_name.endswith("_precomp"):
        return "precomp"
    if data_name in RAW_DATASETS:
        return "raw"
    raise ConfigError(
        "--data_name",
        f"unknown data_name {data_name!r}: use NAME_precomp (precomputed features), "
        f"{', '.join(RAW_DATASETS)} (images + Karpathy JSON), synthetic or synthetic_precomp",
    )


@dataclass
class SplitData:
    """One split: ``5 × n_images`` captions in image order and a way to fetch image ``i``."""

    name: str
    captions: list[str]
    n_images: int
    kind: str  # "features", "array" or "files"
    features: np.ndarray | None = None  # n_images × img_dim (may be a memory map)
    array: np.ndarray | None = None  # n_images × H × W × 3 uint8
    files: list[str] = field(default_factory=list)
    source: str = ""
    descriptions: list | None = None  # synthetic only

    @property
    def img_dim(self) -> int | None:
        return None if self.features is None else int(self.features.shape[1])


# ----------------------------------------------------------------------------- readers


def _read_captions(path: str) -> list[str]:
    """Every line of ``path`` is a caption, a blank one too, as in the original PrecompDataset: the
    count is the file's line count, and a blank line does not shift the captions after it onto
    other images."""
    if not os.path.isfile(path):
        raise DataError(path, "no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check_count(caps_path: str, caps: list[str], n_images: int) -> None:
    if len(caps) != CAPS_PER_IMAGE * n_images:
        blank = [i + 1 for i, c in enumerate(caps) if not c]
        shown = ", ".join(map(str, blank[:3])) + (", ..." if len(blank) > 3 else "")
        also = f"; every line is a caption, {len(blank)} blank (line{'s' * (len(blank) > 1)} {shown})" if blank else ""
        raise DataError(
            caps_path,
            f"{len(caps)} captions for {n_images} images: expected {CAPS_PER_IMAGE} per image "
            f"({CAPS_PER_IMAGE * n_images}){also}",
        )


def _repeated(ims: np.ndarray, groups: int = 20) -> bool:
    """Whether the rows come in runs of 5 identical rows (checked on the first ``groups`` runs)."""
    head = np.asarray(ims[: CAPS_PER_IMAGE * groups])
    head = head[: len(head) // CAPS_PER_IMAGE * CAPS_PER_IMAGE].reshape(-1, CAPS_PER_IMAGE, head.shape[1])
    return bool(len(head)) and bool((head == head[:, :1]).all())


def load_precomp(data_path: str, data_name: str, split: str) -> SplitData:
    root = os.path.join(data_path, data_name)
    ims_path = os.path.join(root, f"{split}_ims.npy")
    caps_path = os.path.join(root, f"{split}_caps.txt")
    if not os.path.isdir(root):
        raise DataError(root, "no such directory (expected {split}_ims.npy and {split}_caps.txt in it)")
    if not os.path.isfile(ims_path):
        raise DataError(ims_path, "no such file")
    try:
        ims = np.load(ims_path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(ims_path, f"not a readable .npy array ({str(e).splitlines()[0]})") from None
    if ims.ndim != 2 or not np.issubdtype(ims.dtype, np.floating):
        raise DataError(ims_path, f"expected a 2-D float array (images × features), got shape {ims.shape} {ims.dtype}")
    if len(ims) == 0:
        raise DataError(ims_path, f"no images (0 rows): the {split} split is empty")
    caps = _read_captions(caps_path)
    if len(caps) == len(ims) and len(ims) % CAPS_PER_IMAGE == 0 and _repeated(ims):
        # The original f8k/f30k release repeats each image's features once per caption.
        ims = ims[::CAPS_PER_IMAGE]
    _check_count(caps_path, caps, len(ims))
    return SplitData(split, caps, len(ims), "features", features=ims, source=root)


def _karpathy_json(data_path: str, data_name: str):
    path = os.path.join(data_path, data_name, RAW_DATASETS[data_name])
    if not os.path.isfile(path):
        also = " or annotations/ of the original code's layout" if data_name == "coco" else ""
        raise DataError(path, f"no such file (the Karpathy split file{also})")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(path, 'malformed Karpathy split file: expected {"images": [...]}')
    return path, doc["images"]


def load_raw(
    data_path: str, data_name: str, split: str, use_restval: bool = False, check_files: bool = True
) -> SplitData:
    json_path, entries = _karpathy_json(data_path, data_name)
    wanted = set(KARPATHY_SPLIT[split]) | ({"restval"} if split == "train" and use_restval else set())
    image_root = os.path.join(data_path, data_name, "images")
    files, caps = [], []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "split" not in e or "filename" not in e or "sentences" not in e:
            raise DataError(json_path, f"image entry {i} lacks one of 'split', 'filename', 'sentences'")
        for key in ("split", "filename") + (("filepath",) if data_name == "coco" and "filepath" in e else ()):
            if not isinstance(e[key], str):
                raise DataError(json_path, f"image entry {i}: its {key!r} is {e[key]!r}, not a string")
        if e["split"] not in wanted:
            continue
        sents = e["sentences"]
        if not isinstance(sents, list) or len(sents) < CAPS_PER_IMAGE:
            raise DataError(
                json_path,
                f"image entry {i} ({e['filename']}) has "
                f"{len(sents) if isinstance(sents, list) else 0} captions: at least {CAPS_PER_IMAGE} needed",
            )
        for s in sents[:CAPS_PER_IMAGE]:  # COCO images with 6 or 7 captions keep their first 5
            text = s.get("raw") if isinstance(s, dict) else None
            tokens = s.get("tokens") if isinstance(s, dict) else None
            if text is None and isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                text = " ".join(tokens)
            if not isinstance(text, str):
                raise DataError(json_path, f"image entry {i} ({e['filename']}): a sentence without 'raw' or 'tokens'")
            caps.append(text.strip())
        sub = e.get("filepath", "") if data_name == "coco" else ""
        files.append(os.path.join(image_root, sub, e["filename"]))
    if not files:
        named = " or ".join(f'"split": "{w}"' for w in sorted(wanted))
        raise DataError(json_path, f"no images of the {split} split (entries with {named})")
    if check_files:
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(missing[0], f"missing image listed in {json_path}{more}")
    return SplitData(split, caps, len(files), "files", files=files, source=json_path)


def load_synthetic(opt, split: str, log=print) -> SplitData:
    cfg = synthetic_config(opt)
    data = synthetic.load(cfg, getattr(opt, "data_cache", None) or None, log=log)
    name = "test" if split == "testall" else split
    part = data[name]
    if opt.data_name == "synthetic_precomp":  # the pretrained CNN's features of these images
        from . import pretrain

        return SplitData(
            split,
            part["captions"],
            len(part["images"]),
            "features",
            features=pretrain.load_features(opt, log=log)[name],
            source=f"synthetic_precomp(seed={cfg.seed}, pretrain_seed={opt.pretrain_seed})",
            descriptions=part["descriptions"],
        )
    return SplitData(
        split,
        part["captions"],
        len(part["images"]),
        "array",
        array=part["images"],
        source=f"synthetic(seed={cfg.seed})",
        descriptions=part["descriptions"],
    )


def synthetic_config(opt) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(
        seed=opt.data_seed,
        n_train=opt.synthetic_train,
        n_dev=opt.synthetic_dev,
        n_test=getattr(opt, "synthetic_test", 1000),
        image_size=opt.synthetic_size,
    )


def load_split(opt, split: str, log=print, check_files: bool = True) -> SplitData:
    """The ``split`` (train, dev, test, testall) of the dataset ``opt`` names."""
    if split not in SPLITS:
        raise ConfigError("--split", f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    kind = layout(opt.data_name)
    if kind == "synthetic":
        return load_synthetic(opt, split, log=log)
    if not opt.data_path:
        raise ConfigError("--data_path", f"--data_name {opt.data_name} needs --data_path")
    if not os.path.isdir(opt.data_path):
        raise DataError(opt.data_path, "no such directory (--data_path)")
    if kind == "precomp":
        return load_precomp(opt.data_path, opt.data_name, split)
    if opt.data_name == "coco" and original.coco_layout(opt.data_path):  # annotations/, no Karpathy file
        return original.load_coco(opt.data_path, split, getattr(opt, "use_restval", False), check_files)
    return load_raw(opt.data_path, opt.data_name, split, getattr(opt, "use_restval", False), check_files)


# ----------------------------------------------------------------------------- torch datasets


class ImageTransform:
    """Turns one stored image into a tensor: features as they are, arrays and files normalised."""

    def __init__(self, kind: str, train: bool, crop_size: int):
        self.kind, self.train, self.crop_size = kind, train, crop_size
        self._tf = None
        if kind == "files":
            import torchvision.transforms as T

            norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
            if train:
                self._tf = T.Compose([T.RandomResizedCrop(crop_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
            else:
                self._tf = T.Compose(
                    [T.Resize(int(round(crop_size * 256 / 224))), T.CenterCrop(crop_size), T.ToTensor(), norm]
                )
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, split: SplitData, i: int) -> torch.Tensor:
        if self.kind == "features":
            return torch.from_numpy(np.array(split.features[i], dtype=np.float32))
        if self.kind == "array":
            x = torch.from_numpy(np.ascontiguousarray(split.array[i])).permute(2, 0, 1).float().div_(255)
            return (x - self._mean) / self._std
        from PIL import Image

        path = split.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except Exception as e:  # noqa: BLE001
            raise DataError(
                path, f"cannot read image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        return self._tf(im)


class PairDataset(Dataset):
    """Item ``k`` is caption ``k`` with its image ``k // 5`` (the original's ordering)."""

    def __init__(self, split: SplitData, transform: ImageTransform):
        self.split, self.transform = split, transform

    def __len__(self):
        return len(self.split.captions)

    def __getitem__(self, k):
        i = k // CAPS_PER_IMAGE
        return self.transform(self.split, i), self.split.captions[k], k, i


class ImageDataset(Dataset):
    def __init__(self, split: SplitData, transform: ImageTransform):
        self.split, self.transform = split, transform

    def __len__(self):
        return self.split.n_images

    def __getitem__(self, i):
        return self.transform(self.split, i), i


class CaptionDataset(Dataset):
    def __init__(self, split: SplitData):
        self.split = split

    def __len__(self):
        return len(self.split.captions)

    def __getitem__(self, k):
        return self.split.captions[k], k


class PairCollate:
    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, batch):
        images, captions, cap_ids, img_ids = zip(*batch)
        return (torch.stack(images), self.tokenizer(captions), torch.tensor(cap_ids), torch.tensor(img_ids))


def _image_collate(batch):
    images, ids = zip(*batch)
    return torch.stack(images), torch.tensor(ids)


class CaptionCollate:
    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, batch):
        captions, ids = zip(*batch)
        return self.tokenizer(captions), torch.tensor(ids)


def _worker_init(_):
    torch.set_num_threads(1)


def train_loader(
    split: SplitData, tokenizer, batch_size: int, workers: int, crop_size: int, seed: int, rank: int = 0, world: int = 1
) -> DataLoader:
    """Shuffled pairs; the order (and any augmentation) depends only on ``seed``. Under torchrun
    (``world`` > 1) each rank gets its own shard of the shuffled epoch (DistributedSampler)."""
    dataset = PairDataset(split, ImageTransform(split.kind, True, crop_size))
    gen = torch.Generator()
    gen.manual_seed(seed)
    sampler = None
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=PairCollate(tokenizer),
        generator=gen,
        worker_init_fn=_worker_init if workers else None,
        drop_last=False,
    )


def eval_loaders(split: SplitData, tokenizer, batch_size: int, workers: int, crop_size: int):
    """In-order loaders over the images (each once) and the captions of ``split``."""
    images = DataLoader(
        ImageDataset(split, ImageTransform(split.kind, False, crop_size)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_image_collate,
        worker_init_fn=_worker_init if workers else None,
    )
    captions = DataLoader(
        CaptionDataset(split), batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=CaptionCollate(tokenizer)
    )
    return images, captions


def limit_images(split: SplitData, n: int) -> SplitData:
    """The first ``n`` images and their captions (the original validated on 1000 dev images)."""
    if split.n_images <= n:
        return split
    return SplitData(
        split.name,
        split.captions[: CAPS_PER_IMAGE * n],
        n,
        split.kind,
        features=None if split.features is None else split.features[:n],
        array=None if split.array is None else split.array[:n],
        files=split.files[:n],
        source=split.source,
        descriptions=None if split.descriptions is None else split.descriptions[:n],
    )
