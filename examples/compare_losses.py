#!/usr/bin/env python
"""Run train_coco.py for several losses, image-encoder setups and seeds, then tabulate the test
metrics (mean ± std).

    python examples/compare_losses.py                      # SH, MH and ℓ4 on the embedded data, seeds 0 1 2
    python examples/compare_losses.py --variants sh mh --seeds 0 -- --num_epochs 2
    python examples/compare_losses.py --variants lse infonce   # the temperature losses, default τ
    python examples/compare_losses.py --setups precomp frozen finetune scratch --variants sh mh

Variants: sh, mh (--max_violation), lp (ℓ4), topk (top-4), warmup (SH→MH over 800 iterations),
lse (LogSumExpViolationLoss, τ 0.05), infonce (InfoNCELoss, CLIP's loss, τ 0.07).
Setups (how the image encoder starts, the paper's comparisons in miniature): precomp (the
pretrained CNN's features, --data_name synthetic_precomp), frozen (the pretrained CNN, frozen:
the default), finetune (the pretrained CNN, fine-tuned), scratch (random weights, fine-tuned).

Everything after ``--`` goes to every train_coco.py run. Runs whose ``test_metrics.json``
already exists are not repeated (delete the run directory to redo one). Each run's wall time and
CPU time (user + system of the train_coco.py process) are kept beside its metrics, in
``times.json``. A stored file that cannot be read (truncated, not the expected numbers) stops the
command with one line naming it; it is not recomputed silently, since redoing a run takes minutes.
"""

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import time

from vse.checkpoint import write_json
from vse.errors import DataError, UserError, read_json

VARIANTS = {
    "sh": [],
    "mh": ["--max_violation"],
    "lp": ["--loss", "lp", "--lp_p", "4"],
    "topk": ["--loss", "topk", "--topk_k", "4"],
    "warmup": ["--warmup_steps", "800"],
    "lse": ["--loss", "lse"],  # τ 0.05, margin 0.2, summed like the hinge losses
    "infonce": ["--loss", "infonce"],  # CLIP's loss: τ 0.07, no margin, the mean over its terms
}
SETUPS = {
    "precomp": ["--data_name", "synthetic_precomp"],
    "frozen": [],
    "finetune": ["--finetune"],
    "scratch": ["--from_scratch", "--finetune"],
}
SHOWN = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["sh", "mh", "lp"], choices=list(VARIANTS))
    p.add_argument("--setups", nargs="+", default=["frozen"], choices=list(SETUPS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/compare", help="parent directory of the runs")
    args = p.parse_args(argv)
    train = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_coco.py")
    results = {}
    for setup in args.setups:
        for variant in args.variants:
            for seed in args.seeds:
                run = os.path.join(args.out, setup, f"{variant}_seed{seed}")
                try:
                    metrics = run_once(
                        train, run, seed, SETUPS[setup] + VARIANTS[variant] + extra, f"{setup} {variant}"
                    )
                except UserError as e:
                    sys.exit(f"error: {e.where}: {e.problem}")
                results.setdefault(f"{setup} {variant}", []).append(metrics)
    cols = SHOWN + ("time_s", "cpu_s")
    print("\n| loss | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for variant, ms in results.items():
        cells = []
        for k in cols:
            vals = [m[k] for m in ms]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        print(f"| {variant} ({len(ms)} seeds) | " + " | ".join(cells) + " |")
    print(
        "\nper run (i2t R@1 / t2i R@1): "
        + "; ".join(
            f"{v}: " + ", ".join(f"{m['i2t_r1']:.1f}/{m['t2i_r1']:.1f}" for m in ms) for v, ms in results.items()
        )
    )


def run_once(train: str, run: str, seed: int, flags: list[str], name: str) -> dict:
    """The test metrics of one run (trained now unless its test_metrics.json exists), with its
    wall and CPU seconds."""
    metrics_path = os.path.join(run, "test_metrics.json")
    times_path = os.path.join(run, "times.json")
    if not os.path.isfile(metrics_path):
        cmd = [sys.executable, train, "--seed", str(seed), "--logger_name", run] + flags
        print("$ " + " ".join(cmd), flush=True)
        t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        if subprocess.call(cmd) != 0:
            sys.exit(f"error: {name} seed {seed} failed")
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        write_json({"time_s": time.time() - t0, "cpu_s": cpu}, times_path)  # atomic: never a torn file
    m = read_numbers(metrics_path, SHOWN, run)
    times = {"time_s": math.nan, "cpu_s": math.nan}  # runs from before times.json was kept
    if os.path.isfile(times_path):
        times = read_numbers(times_path, tuple(times), run)
    return {**m, **times}


def read_numbers(path: str, keys: tuple[str, ...], run: str) -> dict[str, float]:
    """``keys`` of the JSON object in ``path``, each a number; else a DataError naming the file."""
    try:
        doc = read_json(path)
    except DataError as e:  # truncated, not UTF-8, unreadable
        raise DataError(path, f"{e.problem}; delete {run} to redo the run") from None
    bad = [k for k in keys if not isinstance(doc, dict) or not isinstance(doc.get(k), (int, float))]
    if bad:
        raise DataError(path, f"no number for {', '.join(bad)}: delete {run} to redo the run")
    return {k: float(doc[k]) for k in keys}


if __name__ == "__main__":
    main()
