"""The training loop of train_coco.py (the original ``train.py``), with exact resume.

:func:`run` is a sequence of named steps: the options, the data, the vocabulary, the model with
its loss and optimiser, the state restored from ``--resume``, the epochs, the final test. Every
step that reports something takes the ``log`` to report to (under torchrun only rank 0's prints).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import checkpoint, data, ddp, evaluation, options, pretrain
from .errors import ConfigError, UserError
from .model import build_model, make_tokenizer
from .options import resolve_device
from .vocab import Vocabulary, from_vocab_path
from .vocab import from_checkpoint as vocab_from_checkpoint

Log = Callable[[str], None]


def console(message: str) -> None:
    print(message, flush=True)


def silent(message: str) -> None:
    """The log of the torchrun processes other than rank 0."""


# ----------------------------------------------------------------------------- pieces


def build_loss(opt, distributed: bool = False):
    """The vse_losses criterion ``opt`` names, summed over the batch as in the original (InfoNCE:
    averaged over its terms, as in CLIP); with ``distributed`` (torchrun) its negatives come from
    every rank's batch. The options were checked one by one (``options.validate``); a ValueError
    the library still raises is one line."""
    from pytorch_metric_learning.reducers import MeanReducer, SumReducer

    import vse_losses

    reducer = MeanReducer() if opt.loss == "infonce" else SumReducer()
    common = dict(margin=opt.margin, reducer=reducer, impl=opt.impl, distributed=distributed)
    warmup = None
    try:
        if getattr(opt, "measure", "cosine") == "order":  # the terms from its score matrix, computed by --impl
            common["distance"] = vse_losses.OrderSimilarity(impl=opt.impl)
        if opt.warmup_steps > 0:
            loss = vse_losses.MixedViolationLoss(mix=0.0, **common)
            warmup = vse_losses.SHToMHWarmup(loss, opt.warmup_steps)
        elif opt.loss == "sh":
            loss = vse_losses.SumHingeLoss(**common)
        elif opt.loss == "mh":
            loss = vse_losses.MaxViolationLoss(**common)
        elif opt.loss == "topk":
            loss = vse_losses.TopKViolationLoss(k=opt.topk_k, **common)
        elif opt.loss == "lse":
            loss = vse_losses.LogSumExpViolationLoss(temperature=opt.temperature, **common)
        elif opt.loss == "infonce":
            loss = vse_losses.InfoNCELoss(temperature=opt.temperature, **common)
        else:
            loss = vse_losses.LpViolationLoss(p=opt.lp_p, **common)
    except ValueError as e:
        raise ConfigError("loss", str(e)) from None
    return loss, warmup


def loss_name(opt) -> str:
    if opt.warmup_steps > 0:
        return f"SH→MH warm-up over {opt.warmup_steps} iterations (MixedViolationLoss + SHToMHWarmup)"
    if opt.loss in options.TEMPERATURE_LOSSES:
        name = {"lse": "log-sum-exp (LogSumExpViolationLoss)", "infonce": "InfoNCE (InfoNCELoss)"}[opt.loss]
        if opt.learn_temperature:
            return (
                f"{name}, temperature learned (logit_scale = log(1/τ) from τ = {opt.temperature:g}, "
                f"1/τ ≤ {options.MAX_LOGIT_SCALE:g})"
            )
        return f"{name}, temperature {opt.temperature:g}"
    return {
        "sh": "SH (SumHingeLoss)",
        "mh": "MH (MaxViolationLoss)",
        "topk": f"top-{opt.topk_k} (TopKViolationLoss)",
        "lp": f"ℓ{opt.lp_p:g} (LpViolationLoss)",
    }[opt.loss]


def reduction_name(opt) -> str:
    return "averaged over its terms (as CLIP)" if opt.loss == "infonce" else "summed over the batch"


class LearnedTemperature(torch.nn.Module):
    """CLIP's learned temperature: ``logit_scale = log(1/τ)``, a parameter trained by the model's
    optimiser, clamped after each step so that 1/τ ≤ 100; the loss gets ``τ = 1/exp(logit_scale)``
    as a tensor, so that its gradient reaches ``logit_scale``."""

    def __init__(self, temperature: float, device=None):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / temperature), device=device))

    def temperature(self) -> torch.Tensor:
        """τ = 1/exp(logit_scale), a 0-dim tensor carrying the gradient."""
        return torch.exp(-self.logit_scale)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.logit_scale.clamp_(max=math.log(options.MAX_LOGIT_SCALE))

    @property
    def value(self) -> float:
        return float(torch.exp(-self.logit_scale.detach()))


def test_split_name(opt) -> str:
    """COCO precomp keeps its 5000 test images in ``testall`` (``test`` is the first 1000)."""
    if (
        opt.precomp
        and opt.data_name.startswith("coco")
        and opt.data_path
        and os.path.isfile(os.path.join(opt.data_path, opt.data_name, "testall_ims.npy"))
    ):
        return "testall"
    return "test"


def lr_at(opt, epoch: int) -> float:
    """The original schedule: the learning rate divided by 10 every ``lr_update`` epochs."""
    return opt.learning_rate * (0.1 ** (epoch // max(opt.lr_update, 1)))


# ----------------------------------------------------------------------------- outputs

# collapse_alarm: the iteration at which the collapse alarm fired (vse_losses.CollapseAlarm), empty before
CSV_FIELDS = ["epoch", "iterations", "lr", "mix", "temperature", "train_loss", "epoch_time_s", "collapse_alarm"] + list(
    evaluation.KEYS
)


def write_csv(history: list[dict], path: str) -> None:
    with checkpoint.atomic_file(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_plot(history: list[dict], path: str) -> None:
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


# ----------------------------------------------------------------------------- progress


class Progress:
    """The progress of one epoch. On a terminal (stdout a tty): a tqdm bar, its loss updated every
    ``--log_step`` iterations. Anywhere else (a log file, nohup, CI, a notebook): a line every
    ``--log_step`` iterations, counted over the whole run as in the original ``train.py``::

        Epoch: [2][8/20]  iteration 28  loss 41.207 (epoch mean 43.951)  lr 0.0005  3.10 it/s, 50 samples/s

    epoch from 1, then iterations done in this epoch / iterations per epoch; ``loss`` is the mean
    over the iterations since the previous line of this epoch (or its start; the loss of a batch
    is summed over its pairs, as in the original; InfoNCE's is its mean over its terms),
    ``epoch mean`` the mean over the epoch so far (the figure of the epoch's summary line and
    metrics.csv); the speed is measured over the same iterations, validations excluded. With
    ``--learn_temperature`` the line has ``temperature 0.0693`` (τ after the line's last step)
    after the learning rate."""

    def __init__(self, epoch: int, num_epochs: int, n_batches: int, log_step: int, lr: float, log: Log, bar: bool):
        self.epoch, self.n_batches, self.log_step, self.lr, self.log = epoch, n_batches, log_step, lr, log
        self.total, self.batches = 0.0, 0
        self.temperature: float | None = None
        self._start_window()
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=n_batches,
                desc=f"epoch {epoch + 1}/{num_epochs}",
                file=sys.stdout,
                leave=False,
                dynamic_ncols=True,
            )

    def _start_window(self) -> None:
        self.window_loss, self.window_batches, self.window_samples = 0.0, 0, 0
        self.window_start = time.perf_counter()

    @property
    def mean(self) -> float:
        """The mean loss of the epoch so far."""
        return self.total / max(self.batches, 1)

    def step(self, iteration: int, loss: float, samples: int, temperature: float | None = None) -> None:
        """One iteration done: ``iteration`` counted over the run, ``loss`` its value, ``samples``
        pairs, ``temperature`` the learned τ after it (None: not learned)."""
        self.temperature = temperature
        self.total += loss
        self.batches += 1
        self.window_loss += loss
        self.window_batches += 1
        self.window_samples += samples
        if self.bar is not None:
            self.bar.update(1)
        if iteration % self.log_step == 0:
            self._report(iteration)

    def _report(self, iteration: int) -> None:
        if self.bar is not None:
            post = {"loss": f"{self.mean:.3f}"}
            if self.temperature is not None:
                post["temperature"] = f"{self.temperature:.4f}"
            self.bar.set_postfix(post, refresh=False)
        else:
            seconds = max(time.perf_counter() - self.window_start, 1e-9)
            tau = "" if self.temperature is None else f"temperature {self.temperature:.4f}  "
            self.log(
                f"Epoch: [{self.epoch + 1}][{self.batches}/{self.n_batches}]  iteration {iteration}  "
                f"loss {self.window_loss / self.window_batches:.3f} (epoch mean {self.mean:.3f})  "
                f"lr {self.lr:.3g}  {tau}{self.window_batches / seconds:.2f} it/s, "
                f"{self.window_samples / seconds:.0f} samples/s"
            )
        self._start_window()

    def pause(self) -> None:
        """Before other output (a validation): the bar steps aside."""
        self._paused_at = time.perf_counter()
        if self.bar is not None:
            self.bar.clear()

    def resume(self) -> None:
        """After it: the bar comes back, and the time paused does not count in the speed."""
        self.window_start += time.perf_counter() - self._paused_at
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stdout_is_terminal() -> bool:
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


# ----------------------------------------------------------------------------- one epoch


def pair_labels(opt, cap_ids: torch.Tensor, img_ids: torch.Tensor) -> torch.Tensor:
    """The labels of a batch's pairs for the loss: the image ids (label-aware: two captions of one
    image are not each other's negatives), or with ``--duplicates_as_negatives`` the caption ids,
    which no two pairs share, so that only a pair itself is positive: the original loss exactly."""
    return cap_ids if getattr(opt, "duplicates_as_negatives", False) else img_ids


@dataclass
class Learner:
    """What training updates: the model, its loss (and the loss's warm-up), the optimiser, the
    learned temperature (``--learn_temperature``; else None), and the collapse alarm that watches
    the embeddings (``vse_losses.CollapseAlarm``; None: not watched)."""

    model: torch.nn.Module
    loss_fn: Any
    warmup: Any | None
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    temperature: LearnedTemperature | None = None
    alarm: Any | None = None


def train_epoch(
    model,
    loader,
    learner: Learner,
    opt,
    device,
    state: dict,
    epoch: int,
    on_val_step: Callable[[], Any],
    ctx: ddp.Context = ddp.SINGLE,
    log: Log = console,
) -> float:
    """One epoch of ``model`` (``learner.model``, or its DDP wrapper); the epoch's mean loss."""
    model.train()
    progress = Progress(
        epoch,
        opt.num_epochs,
        len(loader),
        opt.log_step,
        learner.optimizer.param_groups[0]["lr"],
        log,
        bar=ctx.is_main and stdout_is_terminal(),
    )
    for images, text, cap_ids, img_ids in loader:
        images = images.to(device, non_blocking=True)
        text = {k: v.to(device, non_blocking=True) for k, v in text.items()}
        img_ids = img_ids.to(device)
        if learner.temperature is not None:
            learner.loss_fn.temperature = learner.temperature.temperature()  # a tensor: it gets the gradient
        img_emb, cap_emb = model(images, text)
        labels = pair_labels(opt, cap_ids.to(device), img_ids)
        try:
            loss = learner.loss_fn(img_emb, labels, ref_emb=cap_emb, ref_labels=labels)
        except ValueError as e:  # the options were checked before training; anything left is one line
            raise ConfigError("loss", str(e)) from None
        if not torch.isfinite(loss):
            raise ConfigError(
                "training",
                f"the loss became {loss.item()} at iteration {state['Eiters'] + 1}; "
                "try a lower --learning_rate or --grad_clip",
            )
        if learner.alarm is not None and learner.alarm.update(img_emb, labels, ref_emb=cap_emb, ref_labels=labels):
            progress.pause()
            log(f"warning: {learner.alarm.message} (here: --warmup_steps, a lower --learning_rate, --loss lp or topk)")
            progress.resume()
        learner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if learner.temperature is not None:
            ddp.average_gradients(learner.temperature.parameters(), ctx)  # DDP averages the model's only
        if opt.grad_clip > 0:  # the model's parameters; the temperature's one number is left to Adam
            torch.nn.utils.clip_grad_norm_(learner.params, opt.grad_clip)
        learner.optimizer.step()
        if learner.temperature is not None:
            learner.temperature.clamp_()
        if learner.warmup is not None:
            learner.warmup.step()
        state["Eiters"] += 1
        # under torchrun: the loss of the global batch, and the pairs of every rank
        progress.step(
            state["Eiters"],
            ddp.mean(loss.item(), ctx, device),
            len(img_ids) * ctx.world,
            None if learner.temperature is None else learner.temperature.value,
        )
        if opt.val_step > 0 and state["Eiters"] % opt.val_step == 0:
            progress.pause()
            on_val_step()
            progress.resume()
            model.train()
    progress.close()
    return progress.mean


# ----------------------------------------------------------------------------- the run, step by step


def run(opt: argparse.Namespace, explicit: dict[str, object]) -> dict[str, float]:
    """Train as ``opt`` says (``explicit``: the options written on the command line), then test."""
    t_start = time.time()
    opt, ckpt = resolve_options(opt, explicit, console)
    device = resolve_device(opt.device)
    ctx = ddp.setup(device)
    try:
        log = console if ctx.is_main else silent  # under torchrun rank 0 logs, evaluates and writes
        metrics = train_and_test(opt, ckpt, ddp.local_device(device, ctx), ctx, log, t_start)
        # the ranks leave together: the others would otherwise tear their group down while rank 0
        # still tests, and gloo can abort a process whose peer goes away under it
        ddp.barrier(ctx)
        return metrics
    finally:
        ddp.teardown(ctx)


def resolve_options(opt: argparse.Namespace, explicit: dict[str, object], log: Log):
    """The run's options, checked, and the checkpoint it continues (``--resume``; else None)."""
    if not opt.resume:
        return options.finalize(opt, explicit, log=log), None
    ckpt = checkpoint.load(opt.resume, checkpoint.RESUME_KEYS, vocab_path=explicit.get("vocab_path"))
    opt = options.merge_resumed(ckpt["opt"], opt, explicit)
    log(f"resuming {opt.resume} at epoch {ckpt['epoch'] + 1} (iteration {ckpt['Eiters']})")
    if ckpt.get("source") == "original":
        log(
            f"an original VSE++ checkpoint, vocabulary {ckpt['vocab_file']}: Adam starts afresh (the original "
            "saves no optimiser state)"
        )
    return opt, ckpt


def train_and_test(
    opt, ckpt: dict | None, device: torch.device, ctx: ddp.Context, log: Log, t_start: float
) -> dict[str, float]:
    """The steps of a run, in order; the test metrics (rank 0; ``{}`` on the other ranks)."""
    options.check_impl(opt.impl, device)
    checkpoint.seed_everything(opt.seed)
    try:
        os.makedirs(opt.logger_name, exist_ok=True)
    except OSError as e:  # a file in the way, or no permission
        raise ConfigError("--logger_name", f"cannot create the directory {opt.logger_name} ({e.strerror})") from None
    train, dev = load_data(opt, log)
    if ckpt is None or opt.cnn_weights:  # the embedded data's CNN starts pretrained (pretrain.py)
        pretrain.use_pretrained_cnn(opt, log)
    vocab = load_vocab(opt, ckpt, train, ctx, log)
    tokenizer = make_tokenizer(opt, vocab)
    learner = build_learner(opt, len(vocab), device, ctx, log)
    state = restore(learner, ckpt, opt) if ckpt is not None else new_state()
    if ckpt is not None and ctx.is_main:
        keep_best_known(opt, learner, state, vocab, log)
    log(describe_run(opt, learner, device, ctx))
    train_epochs(opt, learner, state, train, dev, tokenizer, vocab, device, ctx, log)
    metrics = test_best(opt, learner.model, state, tokenizer, device, log, t_start) if ctx.is_main else {}
    # the ranks leave together: gloo could abort a rank that tore its group down while rank 0 was
    # still testing ("terminate called without an active exception", seen once in 5 runs)
    ddp.barrier(ctx)
    return metrics


def load_data(opt, log: Log) -> tuple[data.SplitData, data.SplitData]:
    """The training split and the dev split (its first ``--val_images``); sets ``opt.img_dim``
    from the features of a precomp dataset. The test split is read too, so that a missing or
    empty one stops the run before training rather than after it."""
    data.layout(opt.data_name)
    train = data.load_split(opt, "train", log=log)
    dev = data.limit_images(data.load_split(opt, "dev", log=log), opt.val_images)
    test = data.load_split(opt, test_split_name(opt), log=log)
    if opt.data_name in options.SYNTHETIC_NAMES:
        from . import synthetic

        log(
            f"embedded dataset: {train.n_images}/{dev.n_images}/{test.n_images} train/dev/test images, 5 captions "
            f"each, {opt.synthetic_size}x{opt.synthetic_size} px, data seed {opt.data_seed}; best achievable R@1 on "
            f"test = {synthetic.best_recall_at_1(test.descriptions):.1f}% in both directions (identical descriptions "
            f"tie; chance 0.1%); {synthetic.hard_negative_rate(test.descriptions):.0f}% of test images have a test "
            "image one attribute away"
        )
    else:
        log(f"data: {train.source}: {train.n_images} train images, {dev.n_images} dev images (5 captions each)")
    if opt.precomp:
        if opt.img_dim is not None and opt.img_dim != train.img_dim:
            raise ConfigError(
                "--img_dim", f"{opt.img_dim} given but the features in {train.source} have {train.img_dim}"
            )
        opt.img_dim = train.img_dim
    return train, dev


def load_vocab(opt, ckpt: dict | None, train: data.SplitData, ctx: ddp.Context, log: Log) -> Vocabulary:
    """The checkpoint's vocabulary when resuming, else ``--vocab_path``'s, else one built from ``train``."""
    if ckpt is not None:
        return vocab_from_checkpoint(ckpt)
    if opt.vocab_path:
        return from_vocab_path(opt.vocab_path, opt.data_name, train.captions, write=ctx.is_main, log=log)
    return Vocabulary.build(train.captions, threshold=4)


def build_learner(opt, vocab_size: int, device: torch.device, ctx: ddp.Context, log: Log) -> Learner:
    import vse_losses

    model = build_model(opt, vocab_size, log=log).to(device)
    loss_fn, warmup = build_loss(opt, distributed=ctx.active)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=opt.learning_rate)
    temperature = None
    if getattr(opt, "learn_temperature", False):
        # as CLIP: one more parameter for the same optimiser (its own group, same learning rate)
        temperature = LearnedTemperature(opt.temperature, device=device)
        optimizer.add_param_group({"params": list(temperature.parameters())})
    # steps are iterations; the alarm's line is printed by train_epoch, not as a Python warning
    window = getattr(opt, "collapse_window", 50)  # a checkpoint from before the option: the default
    alarm = vse_losses.CollapseAlarm(window, margin=opt.margin, warn=False) if window > 0 else None
    return Learner(model, loss_fn, warmup, params, optimizer, temperature, alarm)


def new_state() -> dict:
    """Where a fresh run starts: epoch, iteration count, best dev rsum, per-epoch history."""
    return {"epoch": 0, "Eiters": 0, "best_rsum": -math.inf, "history": []}


def restore(learner: Learner, ckpt: dict, opt) -> dict:
    """The model, optimiser, warm-up, learned temperature and RNG states of ``ckpt``; returns its
    training state."""
    checkpoint.load_weights(learner.model, ckpt, opt.resume, hint="; do not change the sizes when resuming")
    if learner.temperature is not None:
        if not torch.is_tensor(ckpt.get("logit_scale")) or ckpt["logit_scale"].ndim != 0:
            raise ConfigError(
                opt.resume, "--learn_temperature is set but the checkpoint has no learned temperature (logit_scale)"
            )
        with torch.no_grad():
            learner.temperature.logit_scale.copy_(ckpt["logit_scale"])
    try:
        if "optimizer" in ckpt:  # not in the original code's checkpoints
            learner.optimizer.load_state_dict(ckpt["optimizer"])
    except ValueError as e:
        raise ConfigError(
            opt.resume,
            f"the optimiser state does not fit this model ({e}); do not change --finetune or the sizes when resuming",
        ) from None
    if learner.warmup is not None and ckpt.get("warmup"):
        learner.warmup.load_state_dict(ckpt["warmup"])
    if learner.alarm is not None:
        if ckpt.get("collapse_alarm"):
            learner.alarm.load_state_dict(ckpt["collapse_alarm"])
        else:  # a checkpoint from before the alarm, or from a run that did not watch: steps are iterations
            learner.alarm.steps = int(ckpt["Eiters"])
    if "rng" in ckpt:
        checkpoint.set_rng_state(ckpt["rng"])
    return {
        "epoch": int(ckpt["epoch"]),
        "Eiters": int(ckpt["Eiters"]),
        "best_rsum": float(ckpt["best_rsum"]),
        "history": list(ckpt.get("history", [])),
    }


def describe_run(opt, learner: Learner, device: torch.device, ctx: ddp.Context) -> str:
    n_params = sum(p.numel() for p in learner.params)
    return (
        f"model: image encoder {'linear on ' + str(opt.img_dim) + '-d features' if opt.precomp else opt.cnn_type}"
        f"{'' if opt.precomp else (' (fine-tuned)' if opt.finetune else ' (frozen)')}, text encoder "
        f"{opt.text_encoder or 'GRU'}, embed_size {opt.embed_size}; {n_params:,} trainable parameters; "
        f"loss {loss_name(opt)}, margin {opt.margin:g}, {reduction_name(opt)}, measure {opt.measure}"
        f"{' (--use_abs)' if opt.use_abs else ''}; device {device}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f"; {ctx.world} processes (torchrun), --batch_size {opt.batch_size} each" if ctx.active else "")
    )


def validate(
    tag: str, model, dev: data.SplitData, tokenizer, opt, device, ctx: ddp.Context, log: Log
) -> dict[str, float]:
    """The dev metrics (rank 0 evaluates, the other ranks wait and get ``{}``), logged under ``tag``."""
    ddp.barrier(ctx)
    if not ctx.is_main:
        ddp.barrier(ctx)
        return {}
    m = evaluation.evaluate_split(model, dev, tokenizer, opt, device, fold5=False)
    ddp.barrier(ctx)
    log(
        f"{tag}: dev i2t R@1/5/10 {m['i2t_r1']:.1f}/{m['i2t_r5']:.1f}/{m['i2t_r10']:.1f}, "
        f"t2i {m['t2i_r1']:.1f}/{m['t2i_r5']:.1f}/{m['t2i_r10']:.1f}, rsum {m['rsum']:.1f}"
    )
    return m


def train_epochs(
    opt,
    learner: Learner,
    state: dict,
    train: data.SplitData,
    dev: data.SplitData,
    tokenizer,
    vocab: Vocabulary,
    device: torch.device,
    ctx: ddp.Context,
    log: Log,
) -> None:
    """Epochs ``state["epoch"]`` to ``--num_epochs``, each followed by a validation and (rank 0)
    the checkpoints, metrics.csv and metrics.png."""
    train_model = ddp.wrap(learner.model, device, ctx)
    for epoch in range(state["epoch"], opt.num_epochs):
        lr = lr_at(opt, epoch)
        for g in learner.optimizer.param_groups:
            g["lr"] = lr
        loader = data.train_loader(
            train,
            tokenizer,
            opt.batch_size,
            opt.workers,
            opt.crop_size,
            seed=opt.seed * 1_000_003 + epoch,
            rank=ctx.rank,
            world=ctx.world,
        )
        t0 = time.time()

        def on_val_step():
            validate(f"iteration {state['Eiters']}", learner.model, dev, tokenizer, opt, device, ctx, log)

        mean_loss = train_epoch(
            train_model, loader, learner, opt, device, state, epoch=epoch, on_val_step=on_val_step, ctx=ctx, log=log
        )
        m = validate(
            f"epoch {epoch + 1}/{opt.num_epochs} (loss {mean_loss:.3f}, {time.time() - t0:.0f} s)",
            learner.model,
            dev,
            tokenizer,
            opt,
            device,
            ctx,
            log,
        )
        state["epoch"] = epoch + 1
        if not ctx.is_main:
            continue
        fired = learner.alarm.fired_step if learner.alarm is not None else None
        if fired is None:  # else the alarm has said it already, with the remedies
            warn_if_collapsed(m, opt, state, log)
        is_best = record_epoch(
            state,
            m,
            lr,
            mean_loss,
            time.time() - t0,
            learner.warmup,
            temperature_of(learner, opt),
            "" if fired is None else fired,
        )
        save_checkpoints(opt, learner, state, vocab, is_best)
        write_csv(state["history"], os.path.join(opt.logger_name, "metrics.csv"))
        write_plot(state["history"], os.path.join(opt.logger_name, "metrics.png"))


def warn_if_collapsed(m: dict[str, float], opt, state: dict, log: Log) -> None:
    """A notice, once per run, when dev recall is at chance level."""
    if m["rsum"] < 20 and not state.get("warned_collapse"):
        state["warned_collapse"] = True
        plateau = 2 * opt.margin * opt.batch_size
        where = f", where MH-like losses sit at 2·margin per pair (≈{plateau:g} per batch)"
        log(
            f"notice: dev recall is at chance level (chance rsum is about 3): the embeddings may have collapsed "
            f"to one point{where if opt.loss in ('mh', 'topk') else ''}. "
            "MH from random initialisation often does this; --warmup_steps, a lower --learning_rate or "
            "pretrained --cnn_weights help"
        )


def temperature_of(learner: Learner, opt):
    """The loss's τ at the end of the epoch: the learned value, --temperature, or "" (no τ)."""
    if learner.temperature is not None:
        return learner.temperature.value
    return opt.temperature if opt.loss in options.TEMPERATURE_LOSSES else ""


def record_epoch(
    state: dict,
    m: dict[str, float],
    lr: float,
    mean_loss: float,
    seconds: float,
    warmup,
    temperature="",
    collapse_alarm="",
) -> bool:
    """The epoch's row of the history and the best dev rsum; whether this epoch is the best so far."""
    is_best = m["rsum"] > state["best_rsum"]
    state["best_rsum"] = max(m["rsum"], state["best_rsum"])
    state["history"].append(
        {
            "epoch": state["epoch"],
            "iterations": state["Eiters"],
            "lr": lr,
            "mix": warmup.mix if warmup is not None else "",
            "temperature": temperature,
            "train_loss": mean_loss,
            "epoch_time_s": seconds,
            "collapse_alarm": collapse_alarm,
            **m,
        }
    )
    return is_best


def save_checkpoints(opt, learner: Learner, state: dict, vocab: Vocabulary, is_best: bool) -> None:
    """checkpoint.pth.tar, and model_best.pth.tar when ``is_best``: everything an exact resume needs."""
    ckpt_state = checkpoint_state(opt, learner, state, vocab)
    checkpoint.atomic_save(ckpt_state, os.path.join(opt.logger_name, "checkpoint.pth.tar"))
    if is_best:
        checkpoint.atomic_save(ckpt_state, os.path.join(opt.logger_name, "model_best.pth.tar"))


def checkpoint_state(opt, learner: Learner, state: dict, vocab: Vocabulary) -> dict[str, Any]:
    """What a checkpoint holds: the model, the optimiser, the RNGs, the options, the vocabulary, ..."""
    ckpt_state = {
        "format_version": checkpoint.FORMAT_VERSION,
        "epoch": state["epoch"],
        "Eiters": state["Eiters"],
        "best_rsum": state["best_rsum"],
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "warmup": learner.warmup.state_dict() if learner.warmup is not None else {},
        "opt": checkpoint.plain_options(opt),
        "vocab": vocab.to_list(),
        "vocab_tokenizer": vocab.tokenizer,
        "history": state["history"],
        "rng": checkpoint.rng_state(),
    }
    if learner.alarm is not None:
        ckpt_state["collapse_alarm"] = learner.alarm.state_dict()
    if learner.temperature is not None:
        ckpt_state["logit_scale"] = learner.temperature.logit_scale.detach().cpu().clone()
    return ckpt_state


def keep_best_known(opt, learner: Learner, state: dict, vocab: Vocabulary, log: Log) -> None:
    """A run resumed into another directory than its checkpoint's starts that directory's
    model_best.pth.tar with the best model known, so that the model tested at the end is the best
    on dev even when no new epoch beats the stored best rsum: the resumed run's model_best.pth.tar
    beside the checkpoint (copied) when it holds that best rsum, else the resumed model."""
    source_dir = os.path.dirname(os.path.abspath(opt.resume))
    if os.path.realpath(source_dir) == os.path.realpath(opt.logger_name):
        return  # the run's own directory: its model_best.pth.tar is the run's
    best_path = os.path.join(opt.logger_name, "model_best.pth.tar")
    source_best = os.path.join(source_dir, "model_best.pth.tar")
    if (
        os.path.isfile(source_best)
        and not os.path.samefile(source_best, opt.resume)
        and _best_rsum(source_best, opt.vocab_path) == state["best_rsum"]
    ):
        with open(source_best, "rb") as src, checkpoint.atomic_file(best_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        log(f"{best_path}: a copy of {source_best}, the best model so far (dev rsum {state['best_rsum']:.1f})")
        return
    checkpoint.atomic_save(checkpoint_state(opt, learner, state, vocab), best_path)
    log(
        f"{best_path}: the resumed model (epoch {state['epoch']}) until an epoch beats the stored best dev rsum "
        f"{state['best_rsum']:.1f}"
    )


def _best_rsum(path: str, vocab_path: str | None) -> float | None:
    """The best dev rsum stored in the checkpoint ``path`` (None: unreadable, or none stored)."""
    try:
        value = checkpoint.load(path, vocab_path=vocab_path).get("best_rsum")
    except UserError:
        return None
    return float(value) if isinstance(value, (int, float)) else None


def test_best(opt, model, state: dict, tokenizer, device: torch.device, log: Log, t_start: float) -> dict[str, float]:
    """The test metrics of the model that was best on dev (model_best.pth.tar, when it holds this
    run's best dev rsum; else ``model`` as it is, and the log says so), printed and written to
    test_metrics.json."""
    best_path = os.path.join(opt.logger_name, "model_best.pth.tar")
    if not math.isfinite(state["best_rsum"]):
        log(f"notice: no epoch was validated, so no model is best on dev: testing the model of epoch {state['epoch']}")
    elif not os.path.isfile(best_path):
        log(f"notice: no {best_path}: testing the last model (epoch {state['epoch']})")
    else:
        best = checkpoint.load(best_path, vocab_path=opt.vocab_path)
        stored = best.get("best_rsum")
        if stored != state["best_rsum"]:  # another run's file, left in this directory
            shown = f"{stored:.2f}" if isinstance(stored, (int, float)) else "none"
            log(
                f"notice: {best_path} is not this run's best model (its best dev rsum {shown}, this run's "
                f"{state['best_rsum']:.2f}): testing the last model (epoch {state['epoch']})"
            )
        else:
            checkpoint.load_weights(model, best, best_path, hint="; it is not this run's model")
            log(f"testing {best_path} (epoch {best['epoch']}, the best dev rsum {state['best_rsum']:.1f})")
    split_name = test_split_name(opt)
    test = data.load_split(opt, split_name, log=log)
    m = evaluation.evaluate_split(model, test, tokenizer, opt, device)
    title = f"{split_name} ({test.n_images} images" + (", 1K = mean of 5 folds" if test.n_images == 5000 else "") + ")"
    log(evaluation.format_table(m, title))
    checkpoint.write_json(m, os.path.join(opt.logger_name, "test_metrics.json"))
    log(f"wrote {opt.logger_name}/test_metrics.json; total time {time.time() - t_start:.0f} s")
    return m


def main(argv: list[str] | None = None) -> int:
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
