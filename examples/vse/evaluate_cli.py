"""evaluate.py: the test metrics of a saved checkpoint."""

from __future__ import annotations

import argparse
import functools
import sys

from . import checkpoint, data, evaluation, options
from .errors import ConfigError, UserError
from .model import build_model, make_tokenizer
from .options import resolve_device
from .vocab import from_checkpoint as vocab_from_checkpoint

log = functools.partial(print, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a train_coco.py checkpoint (image→text and text→image "
        "R@1/5/10, medr, meanr, rsum). Options not given are the ones "
        "stored in the checkpoint."
    )
    p.add_argument("checkpoint", help="checkpoint.pth.tar or model_best.pth.tar")
    p.add_argument("--data_path", default=None, metavar="DIR", help="dataset root (default: the checkpoint's)")
    p.add_argument("--data_name", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument(
        "--vocab_path",
        default=None,
        metavar="DIR",
        help="a checkpoint of the original VSE++ code: the folder of its {data_name}_vocab.pkl "
        "(default: the checkpoint's vocab_path; train_coco.py checkpoints hold their vocabulary)",
    )
    p.add_argument("--split", default="test", choices=list(data.SPLITS), help="split to evaluate (default: test)")
    p.add_argument(
        "--fold5", action="store_true", help="COCO 1K: mean over 5 folds of 1000 images, plus the whole set as 5k_*"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch_size", type=int, default=None, help="evaluation batch size (default: the checkpoint's)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default: the checkpoint's)")
    p.add_argument(
        "--data_cache", default=None, metavar="DIR", help="embedded dataset cache directory (default: the checkpoint's)"
    )
    p.add_argument("--out", default=None, metavar="JSON", help="also write the metrics to this file (default: none)")
    return p


def evaluate(args) -> dict:
    options.validate(args)  # --batch_size, --workers
    options.check_directory("--data_cache", args.data_cache)
    ckpt = checkpoint.load(args.checkpoint, vocab_path=args.vocab_path)
    if ckpt.get("source") == "original":
        log(f"original VSE++ checkpoint; vocabulary {ckpt['vocab_file']} ({len(ckpt['vocab'])} words)")
    elif args.vocab_path is not None:
        log("notice: --vocab_path is not used: a train_coco.py checkpoint holds its vocabulary")
    opt = argparse.Namespace(**ckpt["opt"])
    opt.cnn_weights = None  # the weights are in the checkpoint
    for k in ("data_path", "data_name", "batch_size", "workers", "data_cache"):
        if getattr(args, k) is not None:
            setattr(opt, k, getattr(args, k))
    if args.data_path is not None and args.data_name is None and opt.data_name == "synthetic":
        opt.data_name = "precomp"
    stored = ckpt["opt"]
    reads_features = bool(stored["precomp"]) if "precomp" in stored else options.is_precomp(stored["data_name"])
    data.layout(opt.data_name)  # an unknown --data_name first
    opt.precomp = options.is_precomp(opt.data_name)
    check_layout(args, opt, reads_features)
    device = resolve_device(args.device)
    vocab = vocab_from_checkpoint(ckpt)
    model = build_model(opt, len(vocab), log=lambda *a: None)
    checkpoint.load_weights(model, ckpt, args.checkpoint)
    model.to(device)
    split = data.load_split(opt, args.split, log=log)
    if opt.precomp and split.img_dim != opt.img_dim:
        raise UserError(split.source, f"features have {split.img_dim} dimensions, the model expects {opt.img_dim}")
    if args.fold5 and evaluation.fold5_problem(split.n_images):
        raise ConfigError("--fold5", evaluation.fold5_problem(split.n_images))
    m = evaluation.evaluate_split(model, split, make_tokenizer(opt, vocab), opt, device, fold5=args.fold5)
    title = f"{args.split} ({split.n_images} images" + (", 1K = mean of 5 folds" if args.fold5 else "") + ")"
    log(f"checkpoint {args.checkpoint} (epoch {ckpt['epoch']}), data {split.source}")
    log(evaluation.format_table(m, title))
    if args.out:
        checkpoint.write_json(m, args.out)
    return m


def check_layout(args, opt, reads_features: bool) -> None:
    """ConfigError when the data are images and the model reads precomputed features, or the other
    way round: its encoder could not be built for them, or its weights would not fit."""
    if opt.precomp == reads_features:
        return
    if args.data_name is not None:
        flag, data_is = "--data_name", f"--data_name {opt.data_name} is"
    else:  # --data_path with a model of the embedded images: read as NAME_precomp
        flag, data_is = "--data_path", "without --data_name the data are taken as"
    if reads_features:
        raise ConfigError(
            flag,
            f"the checkpoint's model reads precomputed features ({opt.img_dim}-d), but {data_is} images: "
            "give a NAME_precomp --data_name",
        )
    raise ConfigError(
        flag,
        f"the checkpoint's model reads images (--cnn_type {opt.cnn_type}), but {data_is} precomputed features: "
        "give the images' --data_name (coco, f30k, f8k or synthetic)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args)
    except UserError as e:
        print(f"error: {e.where}: {e.problem}", file=sys.stderr, flush=True)
        return 2
    return 0
