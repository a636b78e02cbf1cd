"""The training loop of train_coco.py (the original ``train.py``), with exact resume."""
from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from . import checkpoint, data, ddp, evaluation, options
from .errors import ConfigError, UserError
from .model import build_model, make_tokenizer
from .options import resolve_device
from .vocab import Vocabulary, from_vocab_path

log = functools.partial(print, flush=True)


# ----------------------------------------------------------------------------- pieces

def build_loss(opt, distributed: bool = False):
    """The vse_losses criterion ``opt`` names, summed over the batch as in the original; with
    ``distributed`` (torchrun) its negatives come from every rank's batch."""
    import vse_losses
    from pytorch_metric_learning.reducers import SumReducer

    common = dict(margin=opt.margin, reducer=SumReducer(), impl=opt.impl, distributed=distributed)
    warmup = None
    try:
        if opt.warmup_steps > 0:
            loss = vse_losses.MixedViolationLoss(mix=0.0, **common)
            warmup = vse_losses.SHToMHWarmup(loss, opt.warmup_steps)
        elif opt.loss == "sh":
            loss = vse_losses.SumHingeLoss(**common)
        elif opt.loss == "mh":
            loss = vse_losses.MaxViolationLoss(**common)
        elif opt.loss == "topk":
            loss = vse_losses.TopKViolationLoss(k=opt.topk_k, **common)
        else:
            loss = vse_losses.LpViolationLoss(p=opt.lp_p, **common)
    except ValueError as e:
        text = str(e).lower()
        flag = ("--impl" if "impl" in text else "--margin" if "margin" in text
                else {"topk": "--topk_k", "lp": "--lp_p"}.get(opt.loss, "--margin"))
        raise ConfigError(flag, str(e)) from None
    return loss, warmup


def loss_name(opt) -> str:
    if opt.warmup_steps > 0:
        return f"SH→MH warm-up over {opt.warmup_steps} iterations (MixedViolationLoss + SHToMHWarmup)"
    return {"sh": "SH (SumHingeLoss)", "mh": "MH (MaxViolationLoss)", "topk": f"top-{opt.topk_k} (TopKViolationLoss)",
            "lp": f"ℓ{opt.lp_p:g} (LpViolationLoss)"}[opt.loss]


def test_split_name(opt) -> str:
    """COCO precomp keeps its 5000 test images in ``testall`` (``test`` is the first 1000)."""
    if opt.precomp and opt.data_name.startswith("coco") and opt.data_path and \
            os.path.isfile(os.path.join(opt.data_path, opt.data_name, "testall_ims.npy")):
        return "testall"
    return "test"


def lr_at(opt, epoch: int) -> float:
    """The original schedule: the learning rate divided by 10 every ``lr_update`` epochs."""
    return opt.learning_rate * (0.1 ** (epoch // max(opt.lr_update, 1)))


# ----------------------------------------------------------------------------- outputs

CSV_FIELDS = ["epoch", "iterations", "lr", "mix", "train_loss", "epoch_time_s"] + list(evaluation.KEYS)


def write_csv(history: List[dict], path: str) -> None:
    with checkpoint.atomic_file(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_plot(history: List[dict], path: str) -> None:
    """Training loss and dev R@K per epoch (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is optional; the CSV has the same numbers
        return
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (batch sum, mean over the epoch)")
    ax1.set_title("training loss")
    if all(r["train_loss"] > 0 for r in history):
        ax1.set_yscale("log")
    for d, style in (("i2t", "-"), ("t2i", "--")):
        for k, colour in (("r1", "C0"), ("r5", "C1"), ("r10", "C2")):
            ax2.plot(epochs, [r[f"{d}_{k}"] for r in history], style, color=colour, marker=".", label=f"{d} R@{k[1:]}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("recall (%)")
    ax2.set_title("dev R@K (i2t solid, t2i dashed)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with checkpoint.atomic_file(path, "wb") as f:
        fig.savefig(f, dpi=80, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- the run

def train_epoch(model, loader, loss_fn, warmup, optimizer, params, opt, device, state, epoch, on_val_step,
                ctx: ddp.Context = ddp.Context()):
    from tqdm import tqdm

    model.train()
    total, batches = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opt.num_epochs}", disable=None, leave=False, dynamic_ncols=True)
    for images, text, _, img_ids in bar:
        images = images.to(device, non_blocking=True)
        text = {k: v.to(device, non_blocking=True) for k, v in text.items()}
        img_ids = img_ids.to(device)
        img_emb, cap_emb = model(images, text)
        # Label-aware call: two captions of one image in a batch are not each other's negatives.
        try:
            loss = loss_fn(img_emb, img_ids, ref_emb=cap_emb, ref_labels=img_ids)
        except ValueError as e:  # e.g. --impl triton without a GPU
            raise ConfigError("--impl" if "impl" in str(e) else "loss", str(e)) from None
        if not torch.isfinite(loss):
            raise ConfigError("training", f"the loss became {loss.item()} at iteration {state['Eiters'] + 1}; "
                              "try a lower --learning_rate or --grad_clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opt.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, opt.grad_clip)
        optimizer.step()
        if warmup is not None:
            warmup.step()
        state["Eiters"] += 1
        total += ddp.mean(loss.item(), ctx, device)  # under torchrun: the loss of the global batch
        batches += 1
        if state["Eiters"] % max(opt.log_step, 1) == 0:
            bar.set_postfix(loss=f"{total / batches:.3f}", refresh=False)
        if opt.val_step > 0 and state["Eiters"] % opt.val_step == 0:
            on_val_step()
            model.train()
    bar.close()
    return total / max(batches, 1)


def run(opt: argparse.Namespace, explicit: Dict[str, object]) -> Dict[str, float]:
    t_start = time.time()
    ckpt = None
    if opt.resume:
        ckpt = checkpoint.load(opt.resume)
        opt = options.merge_resumed(ckpt["opt"], opt, explicit)
        if "loss" not in explicit and ("max_violation" in explicit or "warmup_steps" in explicit):
            opt.loss = None
        opt.loss = options.resolve_loss(opt)
        log(f"resuming {opt.resume} at epoch {ckpt['epoch'] + 1} (iteration {ckpt['Eiters']})")
    else:
        opt = options.finalize(opt, explicit, log=log)
    device = resolve_device(opt.device)
    ctx = ddp.setup(device)
    try:
        return _run(opt, ckpt, ddp.local_device(device, ctx), ctx, t_start)
    finally:
        ddp.teardown(ctx)


def _run(opt, ckpt, device, ctx: ddp.Context, t_start: float) -> Dict[str, float]:
    global log
    if not ctx.is_main:  # under torchrun rank 0 logs, evaluates and writes
        log = functools.partial(print, file=open(os.devnull, "w"))
    checkpoint.seed_everything(opt.seed)
    os.makedirs(opt.logger_name, exist_ok=True)

    # --- data
    data.layout(opt.data_name)
    train = data.load_split(opt, "train", log=log)
    dev = data.limit_images(data.load_split(opt, "dev", log=log), opt.val_images)
    if opt.data_name == "synthetic":
        from . import synthetic

        test = data.load_split(opt, "test", log=log)
        log(f"embedded dataset: {train.n_images}/{dev.n_images}/{test.n_images} train/dev/test images, 5 captions "
            f"each, {opt.synthetic_size}x{opt.synthetic_size} px, data seed {opt.data_seed}; best achievable R@1 on "
            f"test = {synthetic.best_recall_at_1(test.descriptions):.1f}% in both directions (identical descriptions "
            f"tie; chance 0.1%); {synthetic.hard_negative_rate(test.descriptions):.0f}% of test images have a test "
            "image one attribute away")
    else:
        log(f"data: {train.source}: {train.n_images} train images, {dev.n_images} dev images (5 captions each)")
    if opt.precomp:
        if opt.img_dim is not None and opt.img_dim != train.img_dim:
            raise ConfigError("--img_dim", f"{opt.img_dim} given but the features in {train.source} have {train.img_dim}")
        opt.img_dim = train.img_dim
    if ckpt is not None:
        vocab = Vocabulary(ckpt["vocab"])
    elif opt.vocab_path:
        vocab = from_vocab_path(opt.vocab_path, opt.data_name, train.captions, write=ctx.is_main, log=log)
    else:
        vocab = Vocabulary.build(train.captions, threshold=4)
    tokenizer = make_tokenizer(opt, vocab)

    # --- model, loss, optimiser
    model = build_model(opt, len(vocab), log=log).to(device)
    loss_fn, warmup = build_loss(opt, distributed=ctx.active)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opt.learning_rate)
    state = {"epoch": 0, "Eiters": 0, "best_rsum": -math.inf, "history": []}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise ConfigError(opt.resume, f"the optimiser state does not fit this model ({e}); "
                              "do not change --finetune or the sizes when resuming") from None
        if warmup is not None and ckpt.get("warmup"):
            warmup.load_state_dict(ckpt["warmup"])
        state.update(epoch=int(ckpt["epoch"]), Eiters=int(ckpt["Eiters"]), best_rsum=float(ckpt["best_rsum"]),
                     history=list(ckpt.get("history", [])))
        checkpoint.set_rng_state(ckpt["rng"])
    n_params = sum(p.numel() for p in params)
    log(f"model: image encoder {'linear on ' + str(opt.img_dim) + '-d features' if opt.precomp else opt.cnn_type}"
        f"{'' if opt.precomp else (' (fine-tuned)' if opt.finetune else ' (frozen)')}, text encoder "
        f"{opt.text_encoder or 'GRU'}, embed_size {opt.embed_size}; {n_params:,} trainable parameters; "
        f"loss {loss_name(opt)}, margin {opt.margin}, summed over the batch; device {device}, "
        f"{torch.get_num_threads()} CPU threads" + (f"; {ctx.world} processes (torchrun), --batch_size "
                                                      f"{opt.batch_size} each" if ctx.active else ""))
    train_model = ddp.wrap(model, device, ctx)

    def validate(tag: str) -> Dict[str, float]:
        ddp.barrier(ctx)
        if not ctx.is_main:  # rank 0 evaluates; the others wait at the next barrier
            ddp.barrier(ctx)
            return {}
        m = evaluation.evaluate_split(model, dev, tokenizer, opt, device, fold5=False)
        ddp.barrier(ctx)
        log(f"{tag}: dev i2t R@1/5/10 {m['i2t_r1']:.1f}/{m['i2t_r5']:.1f}/{m['i2t_r10']:.1f}, "
            f"t2i {m['t2i_r1']:.1f}/{m['t2i_r5']:.1f}/{m['t2i_r10']:.1f}, rsum {m['rsum']:.1f}")
        return m

    best_path = os.path.join(opt.logger_name, "model_best.pth.tar")
    for epoch in range(state["epoch"], opt.num_epochs):
        lr = lr_at(opt, epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loader = data.train_loader(train, tokenizer, opt.batch_size, opt.workers, opt.crop_size,
                                   seed=opt.seed * 1_000_003 + epoch, rank=ctx.rank, world=ctx.world)
        t0 = time.time()
        mean_loss = train_epoch(train_model, loader, loss_fn, warmup, optimizer, params, opt, device, state, epoch,
                                lambda: validate(f"iteration {state['Eiters']}"), ctx=ctx)
        m = validate(f"epoch {epoch + 1}/{opt.num_epochs} (loss {mean_loss:.3f}, {time.time() - t0:.0f} s)")
        if not ctx.is_main:
            state["epoch"] = epoch + 1
            continue
        if m["rsum"] < 20 and not state.get("warned_collapse"):
            state["warned_collapse"] = True
            plateau = 2 * opt.margin * opt.batch_size
            log(f"notice: dev recall is at chance level (chance rsum is about 3): the embeddings may have collapsed "
                f"to one point{f', where MH-like losses sit at 2·margin per pair (≈{plateau:g} per batch)' if opt.loss in ('mh', 'topk') else ''}. "
                "MH from random initialisation often does this; --warmup_steps, a lower --learning_rate or "
                "pretrained --cnn_weights help")
        is_best = m["rsum"] > state["best_rsum"]
        state["best_rsum"] = max(m["rsum"], state["best_rsum"])
        state["epoch"] = epoch + 1
        state["history"].append({"epoch": epoch + 1, "iterations": state["Eiters"], "lr": lr,
                                 "mix": warmup.mix if warmup is not None else "", "train_loss": mean_loss,
                                 "epoch_time_s": time.time() - t0, **m})
        ckpt_state = {
            "format_version": checkpoint.FORMAT_VERSION,
            "epoch": state["epoch"], "Eiters": state["Eiters"], "best_rsum": state["best_rsum"],
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "warmup": warmup.state_dict() if warmup is not None else {},
            "opt": checkpoint.plain_options(opt), "vocab": vocab.to_list(),
            "history": state["history"], "rng": checkpoint.rng_state(),
        }
        checkpoint.atomic_save(ckpt_state, os.path.join(opt.logger_name, "checkpoint.pth.tar"))
        if is_best:
            checkpoint.atomic_save(ckpt_state, best_path)
        write_csv(state["history"], os.path.join(opt.logger_name, "metrics.csv"))
        write_plot(state["history"], os.path.join(opt.logger_name, "metrics.png"))

    # --- test, with the model that was best on dev (rank 0)
    if not ctx.is_main:
        return {}
    if os.path.isfile(best_path):
        model.load_state_dict(checkpoint.load(best_path)["model"])
    split_name = test_split_name(opt)
    test = data.load_split(opt, split_name, log=log)
    m = evaluation.evaluate_split(model, test, tokenizer, opt, device)
    title = f"{split_name} ({test.n_images} images" + (", 1K = mean of 5 folds" if test.n_images == 5000 else "") + ")"
    log(evaluation.format_table(m, title))
    checkpoint.write_json(m, os.path.join(opt.logger_name, "test_metrics.json"))
    log(f"wrote {opt.logger_name}/test_metrics.json; total time {time.time() - t_start:.0f} s")
    return m


def main(argv: Optional[List[str]] = None) -> int:
    opt, explicit = options.parse(argv)
    try:
        run(opt, explicit)
    except UserError as e:
        print(f"error: {e.where}: {e.problem}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        last = os.path.join(opt.logger_name, "checkpoint.pth.tar")
        hint = f": resume with --resume {last}" if os.path.isfile(last) else " before the first checkpoint"
        print(f"interrupted{hint}", file=sys.stderr, flush=True)
        return 130
    return 0
