"""train_coco.py's command line: the original VSE++ flags and defaults, plus this library's.

Resuming: options stored in the checkpoint are the base, and any option given on the command
line overrides them (``--num_epochs 40 --resume runs/x/checkpoint.pth.tar`` extends a run).
The embedded demo (no ``--data_path``) replaces some defaults by small values; an option given
on the command line always wins over those too.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

LOSSES = ("sh", "mh", "topk", "lp", "lse", "infonce")
TEMPERATURE_LOSSES = ("lse", "infonce")
# --temperature's default per loss: the library's (LogSumExpViolationLoss's 0.05, InfoNCELoss's
# 0.07, CLIP's initial value)
DEFAULT_TEMPERATURE = {"lse": 0.05, "infonce": 0.07}
MAX_LOGIT_SCALE = 100.0  # a learned 1/τ is clamped at 100, as CLIP does

# What the embedded demo uses instead of the original defaults (the paper's sizes are for COCO on
# a GPU). Chosen so that `python examples/train_coco.py` ends within 10 minutes on 2 CPU cores.
DEMO_DEFAULTS = {
    "num_epochs": 4,
    "lr_update": 3,
    "learning_rate": 5e-4,
    "embed_size": 256,
    "cnn_type": "smallcnn",
    "crop_size": 32,
    "workers": 0,
    "val_step": 0,
}


SYNTHETIC_NAMES = ("synthetic", "synthetic_precomp")  # the embedded dataset: images, or the pretrained CNN's features
DEMO_SYNTHETIC_SIZE = 32  # --synthetic_size's default, which is the demo's --crop_size

# How the help states a default that the embedded dataset replaces by something else than
# DEMO_DEFAULTS's value (the text after "; " in "(default: X; ...)").
DEMO_NOTES = {
    "data_name": "synthetic without --data_path",
    "crop_size": f"{DEMO_SYNTHETIC_SIZE} for the embedded dataset, i.e. its --synthetic_size",
}

# Defaults that another option changes (the text after "; " in "(default: X; ...)").
OTHER_NOTES = {
    "margin": "0 with --loss infonce, which is CLIP's loss without a margin",
}


def _default_note(dest: str, default) -> str:
    """`` (default: X)`` for the help of option ``dest``, with what the embedded dataset uses
    instead (``; Y for the embedded dataset``) where that differs. Options without a default value
    (None, "") state theirs in their help; flags (store_true) are off unless the demo turns them on."""
    if dest in DEMO_NOTES:
        demo = DEMO_NOTES[dest]
    elif dest in OTHER_NOTES:
        demo = OTHER_NOTES[dest]
    elif dest in DEMO_DEFAULTS:
        demo = f"{_shown(DEMO_DEFAULTS[dest])} for the embedded dataset"
    else:
        demo = None
    if default is None or default == "" or (default is False and demo is None):
        return ""
    return f" (default: {_shown(default)}" + (f"; {demo}" if demo else "") + ")"


def _shown(value) -> str:
    if value is True or value is False:
        return "on" if value else "off"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train VSE++ (Faghri et al., BMVC 2018) with the vse_losses losses. With no --data_path "
        "it trains on an embedded synthetic dataset and picks small sizes so it ends in minutes: "
        "the defaults marked 'for the embedded dataset'. An option given always wins."
    )

    def a(*flags, help: str, **kwargs):
        action = p.add_argument(*flags, help=help, **kwargs)
        action.help += _default_note(action.dest, action.default)

    # --- the original VSE++ train.py options (names and defaults kept) ---
    a("--data_path", default=None, metavar="DIR", help="dataset root (default: none, the embedded synthetic dataset)")
    a(
        "--data_name",
        default="precomp",
        help="{coco,f8k,f30k,...}_precomp (features), coco|f8k|f30k (images + Karpathy JSON), synthetic, or "
        "synthetic_precomp (the embedded images' features from the pretrained smallcnn)",
    )
    a("--margin", type=float, default=0.2, help="rank loss margin")
    a("--num_epochs", type=int, default=30, help="epochs to train")
    a("--batch_size", type=int, default=128, help="image-caption pairs per batch (per process under torchrun)")
    a("--word_dim", type=int, default=300, help="word embedding size")
    a("--embed_size", type=int, default=1024, help="joint embedding size")
    a("--grad_clip", type=float, default=2.0, help="gradient-norm clipping threshold, 0: none")
    a("--crop_size", type=int, default=224, help="image crop size")
    a("--num_layers", type=int, default=1, help="GRU layers")
    a("--learning_rate", type=float, default=2e-4, help="initial learning rate (Adam)")
    a("--lr_update", type=int, default=15, help="divide the learning rate by 10 every lr_update epochs")
    a("--workers", type=int, default=10, help="data loader processes")
    a(
        "--log_step",
        type=int,
        default=10,
        help="iterations between progress reports: a line (iteration, loss, learning rate, speed) when stdout is "
        "not a terminal, the loss of the progress bar when it is",
    )
    a(
        "--val_step",
        type=int,
        default=500,
        help="iterations between extra validations (logged only; 0: at epoch ends only)",
    )
    a("--logger_name", default="runs/runX", metavar="DIR", help="directory for checkpoints, metrics and the plot")
    a("--resume", default="", metavar="PATH", help="checkpoint to resume from, exactly (default: none)")
    a("--max_violation", action="store_true", help="MH loss (VSE++) instead of SH (VSE0)")
    a("--img_dim", type=int, default=None, help="precomputed feature size (default: read from the features file)")
    a("--finetune", action="store_true", help="train the CNN too")
    a("--cnn_type", default="vgg19", help="smallcnn or any torchvision classification model (resnet152, vgg19...)")
    a("--use_restval", action="store_true", help="COCO: train on restval too")
    a(
        "--measure",
        default="cosine",
        choices=["cosine", "order"],
        help="similarity of training and evaluation: cosine (as in the paper) or order (order embeddings, "
        "-||max(0, caption - image)||, vse_losses.OrderSimilarity; with --use_abs, as the original recommends; "
        "--impl auto, dense or chunked)",
    )
    a("--use_abs", action="store_true", help="absolute value of the embeddings (order-embedding style)")
    a("--no_imgnorm", action="store_true", help="do not l2-normalise image embeddings")
    a(
        "--vocab_path",
        default=None,
        metavar="DIR",
        help="read {DIR}/{data_name}_vocab.json, else the original code's {data_name}_vocab.pkl there (read "
        "without running code, tokenised by NLTK as in the original), else build it from the training split and "
        "write it there as JSON; --resume from an original checkpoint reads its .pkl from DIR "
        "(default: build it, write nothing; the checkpoint always stores it; an original checkpoint's own "
        "vocab_path)",
    )
    a("--reset_train", action="store_true", help="accepted for compatibility (training always runs in train mode)")
    # --- this library ---
    a(
        "--loss",
        choices=LOSSES,
        default=None,
        help="sh | mh | topk | lp | lse (LogSumExpViolationLoss, a smoothed mh) | infonce (InfoNCELoss, CLIP's "
        "loss); the hinge losses and lse are summed over the batch as in the original, infonce is averaged "
        "over its terms as in CLIP, and the same --learning_rate suits both since Adam's steps do not "
        "depend on the loss's scale (default: sh; mh with --max_violation or --warmup_steps)",
    )
    a("--topk_k", type=int, default=2, help="k of --loss topk (1 = MH, >= batch = SH)")
    a("--lp_p", type=float, default=4.0, help="p of --loss lp (1 = SH, inf = MH)")
    a(
        "--temperature",
        type=float,
        default=None,
        help="tau of --loss lse and infonce; with --learn_temperature its initial value, and --resume goes on "
        "from the learned one "
        f"(default: {DEFAULT_TEMPERATURE['lse']} with --loss lse, {DEFAULT_TEMPERATURE['infonce']} with --loss "
        "infonce)",
    )
    a(
        "--learn_temperature",
        action="store_true",
        help="learn tau as CLIP does: a parameter logit_scale = log(1/tau) trained with the model by the same "
        f"optimiser, 1/tau clamped at {MAX_LOGIT_SCALE:g}; --loss lse or infonce. lse grows with tau, so "
        "a learned tau only falls there, towards mh: learning it is meant for infonce",
    )
    a("--warmup_steps", type=int, default=0, help="if > 0: mix SH into MH linearly over this many iterations")
    a(
        "--duplicates_as_negatives",
        action="store_true",
        help="the original loss exactly: two captions of one image in a batch are each other's negatives "
        "(without it they are not: the loss gets the image ids as labels)",
    )
    a(
        "--cnn_feature_norm",
        action="store_true",
        help="l2-normalise the CNN's features before the projection, as the original code does (on in models "
        "of the original code)",
    )
    a("--impl", default="auto", choices=["auto", "dense", "chunked", "triton"], help="vse_losses implementation")
    a(
        "--collapse_window",
        type=int,
        default=50,
        help="warn (one line, and metrics.csv's collapse_alarm column) when the embeddings have sat at one point "
        "per modality for this many iterations (vse_losses.CollapseAlarm); 0: do not watch",
    )
    a("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    a("--seed", type=int, default=0, help="seed of the model initialisation and data order")
    a(
        "--cnn_weights",
        default=None,
        metavar="PATH",
        help="local torchvision state_dict for the CNN, nothing is downloaded (default: none, random initialisation)",
    )
    a(
        "--text_encoder",
        default=None,
        metavar="DIR",
        help="local Hugging Face model directory instead of the GRU (default: none, the GRU)",
    )
    a("--val_images", type=int, default=1000, help="validate on the first N dev images (the original used 1000)")
    # --- the embedded dataset ---
    a("--data_seed", type=int, default=0, help="seed of the embedded dataset")
    a("--synthetic_train", type=int, default=10000, help="embedded dataset: training images")
    a("--synthetic_dev", type=int, default=1000, help="embedded dataset: dev images")
    a("--synthetic_test", type=int, default=1000, help="embedded dataset: test images (1000 for the 1K protocol)")
    a("--synthetic_size", type=int, default=DEMO_SYNTHETIC_SIZE, help="embedded dataset: image side in pixels")
    a(
        "--data_cache",
        default=None,
        metavar="DIR",
        help="where the embedded dataset, the pretrained CNN and its features are cached "
        "(default: $VSE_DATA_CACHE, else examples/data_cache)",
    )
    a(
        "--from_scratch",
        action="store_true",
        help="embedded dataset: start the smallcnn from random weights instead of the pretrained one",
    )
    a("--pretrain_images", type=int, default=10000, help="embedded dataset: images the smallcnn is pretrained on")
    a("--pretrain_epochs", type=int, default=8, help="embedded dataset: epochs of the smallcnn's pretraining")
    a("--pretrain_seed", type=int, default=0, help="embedded dataset: seed of the pretraining images and weights")
    return p


def explicit_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, object]:
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


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, object]]:
    parser = build_parser()
    opt = parser.parse_args(argv)
    return opt, explicit_options(parser, argv)


def finalize(opt: argparse.Namespace, explicit: dict[str, object], log=print) -> argparse.Namespace:
    """Derived fields and the demo's defaults (only for options not given explicitly)."""
    if opt.data_path is None and ("data_name" not in explicit or opt.data_name == "precomp"):
        opt.data_name = "synthetic"
    if opt.data_name in SYNTHETIC_NAMES:
        chosen = {k: v for k, v in DEMO_DEFAULTS.items() if k not in explicit}
        if "crop_size" in chosen:
            chosen["crop_size"] = explicit.get("synthetic_size", opt.synthetic_size)
        for k, v in chosen.items():
            setattr(opt, k, v)
        if chosen:
            log("embedded demo: " + " ".join(_flag(k, v) for k, v in chosen.items()) + " (any option given wins)")
    validate(opt)
    check_directories(opt)
    check_measure(opt, log)
    opt.loss = resolve_loss(opt)
    if opt.loss == "infonce" and "margin" not in explicit:
        opt.margin = 0.0  # CLIP's loss; a --margin given makes it an additive-margin softmax
    resolve_temperature(opt)
    opt.precomp = is_precomp(opt.data_name)
    return opt


def is_precomp(data_name: str) -> bool:
    """Whether the model of a ``--data_name`` reads precomputed features (not images)."""
    return data_name == "precomp" or data_name.endswith("_precomp")


def _flag(k, v) -> str:
    if v is True:
        return f"--{k}"
    return f"--{k} {v}"


def _at_least(low: float) -> tuple[Callable[[float], bool], str]:
    return (lambda v: v >= low), f"must be >= {low:g}"


def _finite_at_least(low: float) -> tuple[Callable[[float], bool], str]:
    return (lambda v: math.isfinite(v) and v >= low), f"must be a finite number >= {low:g}"


# What each numeric option accepts: (test, what the error says). validate() checks each option on
# its own, so a bad value is reported under its own flag before anything is built.
CHECKS: dict[str, tuple[Callable[[float], bool], str]] = {
    "margin": _finite_at_least(0),
    "num_epochs": _at_least(0),
    "batch_size": _at_least(1),
    "word_dim": _at_least(1),
    "embed_size": _at_least(1),
    "grad_clip": _finite_at_least(0),
    "crop_size": _at_least(1),
    "num_layers": _at_least(1),
    "learning_rate": ((lambda v: math.isfinite(v) and v > 0), "must be a finite number > 0"),
    "lr_update": _at_least(1),
    "workers": _at_least(0),
    "log_step": _at_least(1),
    "val_step": _at_least(0),
    "img_dim": _at_least(1),
    "topk_k": _at_least(1),
    "lp_p": ((lambda v: v >= 1), "must be >= 1 (inf allowed: the max violation)"),
    "warmup_steps": _at_least(0),
    "collapse_window": _at_least(0),
    "temperature": ((lambda v: math.isfinite(v) and v > 0), "must be a finite number > 0"),
    "val_images": _at_least(1),
    "data_seed": _at_least(0),
    "synthetic_train": _at_least(1),
    "synthetic_dev": _at_least(1),
    "synthetic_test": _at_least(1),
    "synthetic_size": _at_least(1),
    "pretrain_images": _at_least(1),
    "pretrain_epochs": _at_least(1),
    "pretrain_seed": _at_least(0),
}


def validate(opt: argparse.Namespace) -> None:
    """ConfigError(``--flag``, ...) for the first option whose value cannot work (None: not set)."""
    from .errors import ConfigError

    for name, (ok, requirement) in CHECKS.items():
        value = getattr(opt, name, None)
        if value is not None and not ok(value):  # NaN fails every comparison
            raise ConfigError(f"--{name}", f"{requirement}, got {value}")


def check_directories(opt: argparse.Namespace) -> None:
    """ConfigError(``--logger_name`` / ``--data_cache``) when the directory named cannot be one,
    before anything is computed (the embedded data would be generated first)."""
    check_directory("--logger_name", getattr(opt, "logger_name", None))
    check_directory("--data_cache", getattr(opt, "data_cache", None))


def check_directory(flag: str, path: str | None) -> None:
    """ConfigError(``flag``) when ``path`` (None: not given) or the nearest of its parents that
    exists is not a directory: ``os.makedirs`` would fail there with a traceback."""
    from .errors import ConfigError

    if not path:
        return
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.path.isdir(existing):
        return
    if existing == os.path.abspath(path):
        raise ConfigError(flag, f"{path} exists and is not a directory")
    raise ConfigError(flag, f"{path} cannot be a directory: {existing} is not a directory")


def check_measure(opt: argparse.Namespace, log=None) -> None:
    """--measure order has no Triton kernel (ConfigError for --impl triton); without --use_abs a
    notice (``log``) says that the original uses the two together."""
    from .errors import ConfigError

    if getattr(opt, "measure", "cosine") != "order":
        return
    if opt.impl == "triton":
        raise ConfigError("--impl", "triton has no kernel for --measure order; use auto, dense or chunked")
    if log is not None and not opt.use_abs:
        log("notice: --measure order without --use_abs; the original code uses them together (non-negative embeddings)")


def check_impl(impl: str, device) -> None:
    """ConfigError(``--impl``) when ``--impl triton`` cannot run on ``device`` (no CUDA, or no recent
    triton): a two-pair loss computed there, before training. The other implementations run anywhere."""
    import torch

    import vse_losses

    from .errors import ConfigError

    if impl != "triton":
        return
    x = torch.eye(2, 4, device=device)  # no random numbers: the run's RNG streams stay as they are
    ids = torch.arange(2, device=device)
    try:
        vse_losses.SumHingeLoss(impl=impl)(x, ids, ref_emb=x, ref_labels=ids)
    except ValueError as e:
        raise ConfigError("--impl", str(e)) from None


def resolve_loss(opt) -> str:
    """SH unless --max_violation or --loss says otherwise, as in the original."""
    from .errors import ConfigError

    loss = opt.loss
    if loss is None:
        loss = "mh" if opt.max_violation else "sh"
    elif opt.max_violation and loss != "mh":
        raise ConfigError("--max_violation", f"contradicts --loss {loss} (drop one of them)")
    if opt.warmup_steps > 0 and loss not in ("sh", "mh"):
        raise ConfigError("--warmup_steps", f"warms SH up into MH; it does not combine with --loss {loss}")
    if opt.warmup_steps > 0:
        loss = "mh"  # the target of the warm-up
    return loss


def resolve_temperature(opt) -> None:
    """--temperature's default for the loss, and the checks that involve the loss (after
    :func:`resolve_loss`)."""
    from .errors import ConfigError

    if opt.loss not in TEMPERATURE_LOSSES:
        if getattr(opt, "learn_temperature", False):
            raise ConfigError("--learn_temperature", f"needs --loss lse or infonce, got --loss {opt.loss}")
        return
    if opt.temperature is None:
        opt.temperature = DEFAULT_TEMPERATURE[opt.loss]
    if opt.learn_temperature and opt.temperature < 1 / MAX_LOGIT_SCALE:
        raise ConfigError(
            "--temperature",
            f"must be >= {1 / MAX_LOGIT_SCALE:g} with --learn_temperature (1/tau is "
            f"clamped at {MAX_LOGIT_SCALE:g}, as in CLIP), got {opt.temperature}",
        )


def merge_resumed(
    stored: dict[str, object], current: argparse.Namespace, explicit: dict[str, object]
) -> argparse.Namespace:
    """The stored options, overridden by those given on this command line; checked, and the loss
    resolved again, as :func:`finalize` does for a fresh run."""
    merged = argparse.Namespace(**{**vars(current), **stored})
    for k, v in explicit.items():
        setattr(merged, k, v)
    merged.resume = current.resume
    if "loss" not in explicit and ("max_violation" in explicit or "warmup_steps" in explicit):
        merged.loss = None  # derived again from the new --max_violation / --warmup_steps
    if "learn_temperature" in explicit and not stored.get("learn_temperature"):
        from .errors import ConfigError

        raise ConfigError(
            "--learn_temperature",
            "cannot be switched on when resuming a run that did not learn its temperature: start a new run",
        )
    validate(merged)
    check_directories(merged)
    check_measure(merged)
    merged.loss = resolve_loss(merged)
    resolve_temperature(merged)
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
