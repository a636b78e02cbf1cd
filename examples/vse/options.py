"""train_coco.py's command line: the original VSE++ flags and defaults, plus this library's.

Resuming: options stored in the checkpoint are the base, and any option given on the command
line overrides them (``--num_epochs 40 --resume runs/x/checkpoint.pth.tar`` extends a run).
The embedded demo (no ``--data_path``) replaces some defaults by small values; an option given
on the command line always wins over those too.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Tuple

LOSSES = ("sh", "mh", "topk", "lp")

# What the embedded demo uses instead of the original defaults (the paper's sizes are for COCO on
# a GPU). Chosen so that `python examples/train_coco.py` ends within 10 minutes on 2 CPU cores.
DEMO_DEFAULTS = {
    "num_epochs": 4,
    "lr_update": 3,
    "learning_rate": 5e-4,
    "embed_size": 256,
    "cnn_type": "smallcnn",
    "finetune": True,
    "crop_size": 32,
    "workers": 0,
    "val_step": 0,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train VSE++ (Faghri et al., BMVC 2018) with the vse_losses losses. With no --data_path "
                    "it trains on an embedded synthetic dataset and picks small sizes so it ends in minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    # --- the original VSE++ train.py options (names and defaults kept) ---
    a("--data_path", default=None, help="dataset root; none: the embedded synthetic dataset")
    a("--data_name", default="precomp",
      help="{coco,f8k,f30k,...}_precomp (features), coco|f8k|f30k (images + Karpathy JSON), or synthetic")
    a("--margin", type=float, default=0.2, help="rank loss margin")
    a("--num_epochs", type=int, default=30)
    a("--batch_size", type=int, default=128)
    a("--word_dim", type=int, default=300, help="word embedding size")
    a("--embed_size", type=int, default=1024, help="joint embedding size")
    a("--grad_clip", type=float, default=2.0, help="gradient-norm clipping threshold (0: none)")
    a("--crop_size", type=int, default=224, help="image crop size")
    a("--num_layers", type=int, default=1, help="GRU layers")
    a("--learning_rate", type=float, default=2e-4)
    a("--lr_update", type=int, default=15, help="divide the learning rate by 10 every lr_update epochs")
    a("--workers", type=int, default=10, help="data loader processes")
    a("--log_step", type=int, default=10, help="iterations between progress-bar loss updates")
    a("--val_step", type=int, default=500, help="iterations between extra validations (logged only; 0: at epoch ends only)")
    a("--logger_name", default="runs/runX", help="directory for checkpoints, metrics and the plot")
    a("--resume", default="", metavar="PATH", help="checkpoint to resume from (exactly)")
    a("--max_violation", action="store_true", help="MH loss (VSE++) instead of SH (VSE0)")
    a("--img_dim", type=int, default=None, help="precomputed feature size (default: read from the file)")
    a("--finetune", action="store_true", help="train the CNN too")
    a("--cnn_type", default="vgg19", help="smallcnn or any torchvision classification model (resnet152, vgg19...)")
    a("--use_restval", action="store_true", help="COCO: train on restval too")
    a("--measure", default="cosine", choices=["cosine"], help="similarity (cosine, as in the paper)")
    a("--use_abs", action="store_true", help="absolute value of the embeddings (order-embedding style)")
    a("--no_imgnorm", action="store_true", help="do not l2-normalise image embeddings")
    a("--vocab_path", default=None, metavar="DIR",
      help="read {DIR}/{data_name}_vocab.json, or build it from the training split and write it there "
           "(default: build it; the checkpoint always stores it)")
    a("--reset_train", action="store_true", help="accepted for compatibility (training always runs in train mode)")
    # --- this library ---
    a("--loss", choices=LOSSES, default=None, help="sh | mh | topk | lp (default: sh, or mh with --max_violation)")
    a("--topk_k", type=int, default=2, help="k of --loss topk (1 = MH, >= batch = SH)")
    a("--lp_p", type=float, default=4.0, help="p of --loss lp (1 = SH, inf = MH)")
    a("--warmup_steps", type=int, default=0, help="if > 0: mix SH into MH linearly over this many iterations")
    a("--impl", default="auto", choices=["auto", "dense", "chunked", "triton"], help="vse_losses implementation")
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a("--seed", type=int, default=0, help="seed of the model initialisation and data order")
    a("--cnn_weights", default=None, metavar="PATH", help="local torchvision state_dict for the CNN (nothing is downloaded)")
    a("--text_encoder", default=None, metavar="DIR", help="local Hugging Face model directory instead of the GRU")
    a("--val_images", type=int, default=1000, help="validate on the first N dev images (the original used 1000)")
    # --- the embedded dataset ---
    a("--data_seed", type=int, default=0, help="seed of the embedded dataset")
    a("--synthetic_train", type=int, default=10000, help="embedded dataset: training images")
    a("--synthetic_dev", type=int, default=1000, help="embedded dataset: dev images")
    a("--synthetic_test", type=int, default=1000, help="embedded dataset: test images (1000 for the 1K protocol)")
    a("--synthetic_size", type=int, default=32, help="embedded dataset: image side in pixels")
    a("--data_cache", default=None, help="where the embedded dataset is cached (default examples/data_cache)")
    return p


def explicit_options(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> Dict[str, object]:
    """The options actually written on the command line (not their defaults)."""
    sentinel = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # a copy of the parser whose defaults are all SUPPRESS
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if isinstance(action, argparse._StoreTrueAction):
                kwargs["action"] = "store_true"
            else:
                kwargs.update(type=action.type, choices=action.choices, nargs=action.nargs)
            sentinel.add_argument(*action.option_strings, **kwargs)
    ns, _ = sentinel.parse_known_args(argv)
    return vars(ns)


def parse(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, Dict[str, object]]:
    parser = build_parser()
    opt = parser.parse_args(argv)
    return opt, explicit_options(parser, argv)


def finalize(opt: argparse.Namespace, explicit: Dict[str, object], log=print) -> argparse.Namespace:
    """Derived fields and the demo's defaults (only for options not given explicitly)."""
    if opt.data_path is None and ("data_name" not in explicit or opt.data_name == "precomp"):
        opt.data_name = "synthetic"
    if opt.data_name == "synthetic":
        chosen = {k: v for k, v in DEMO_DEFAULTS.items() if k not in explicit}
        if "crop_size" in chosen:
            chosen["crop_size"] = explicit.get("synthetic_size", opt.synthetic_size)
        for k, v in chosen.items():
            setattr(opt, k, v)
        if chosen:
            log("embedded demo: " + " ".join(_flag(k, v) for k, v in chosen.items()) + " (any option given wins)")
    opt.loss = resolve_loss(opt)
    opt.precomp = opt.data_name == "precomp" or opt.data_name.endswith("_precomp")
    return opt


def _flag(k, v) -> str:
    if v is True:
        return f"--{k}"
    return f"--{k} {v}"


def resolve_loss(opt) -> str:
    """SH unless --max_violation or --loss says otherwise, as in the original."""
    from .errors import ConfigError

    loss = opt.loss
    if loss is None:
        loss = "mh" if opt.max_violation else "sh"
    elif opt.max_violation and loss != "mh":
        raise ConfigError("--max_violation", f"contradicts --loss {loss} (drop one of them)")
    if opt.warmup_steps < 0:
        raise ConfigError("--warmup_steps", "must be >= 0")
    if opt.warmup_steps > 0 and loss not in ("sh", "mh"):
        raise ConfigError("--warmup_steps", f"warms SH up into MH; it does not combine with --loss {loss}")
    if opt.warmup_steps > 0:
        loss = "mh"  # the target of the warm-up
    return loss


def merge_resumed(stored: Dict[str, object], current: argparse.Namespace, explicit: Dict[str, object]) -> argparse.Namespace:
    """The stored options, overridden by those given on this command line."""
    merged = argparse.Namespace(**{**vars(current), **stored})
    for k, v in explicit.items():
        setattr(merged, k, v)
    merged.resume = current.resume
    return merged


def resolve_device(name: str):
    """The torch.device ``--device`` names (``auto``: CUDA when available)."""
    import torch

    from .errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError("--device", f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", f"{name} asked for but CUDA is not available")
    return dev


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
