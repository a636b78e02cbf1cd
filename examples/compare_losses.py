#!/usr/bin/env python
"""Run train_coco.py for several losses and seeds, then tabulate the test metrics (mean ± std).

    python examples/compare_losses.py                      # SH, MH and ℓ4 on the embedded data, seeds 0 1 2
    python examples/compare_losses.py --variants sh mh --seeds 0 -- --num_epochs 2
    python examples/compare_losses.py --variants lse infonce   # the temperature losses, default τ

Variants: sh, mh (--max_violation), lp (ℓ4), topk (top-4), warmup (SH→MH over 800 iterations),
lse (LogSumExpViolationLoss, τ 0.05), infonce (InfoNCELoss, CLIP's loss, τ 0.07).

Everything after ``--`` goes to every train_coco.py run. Runs whose ``test_metrics.json``
already exists are not repeated (delete the run directory to redo one).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "sh": [],
    "mh": ["--max_violation"],
    "lp": ["--loss", "lp", "--lp_p", "4"],
    "topk": ["--loss", "topk", "--topk_k", "4"],
    "warmup": ["--warmup_steps", "800"],
    "lse": ["--loss", "lse"],  # τ 0.05, margin 0.2, summed like the hinge losses
    "infonce": ["--loss", "infonce"],  # CLIP's loss: τ 0.07, no margin, the mean over its terms
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
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/compare", help="parent directory of the runs")
    args = p.parse_args(argv)
    train = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_coco.py")
    results = {}
    for variant in args.variants:
        for seed in args.seeds:
            run = os.path.join(args.out, f"{variant}_seed{seed}")
            metrics_path = os.path.join(run, "test_metrics.json")
            if not os.path.isfile(metrics_path):
                cmd = [sys.executable, train, "--seed", str(seed), "--logger_name", run] + VARIANTS[variant] + extra
                print("$ " + " ".join(cmd), flush=True)
                t0 = time.time()
                if subprocess.call(cmd) != 0:
                    sys.exit(f"error: {variant} seed {seed} failed")
                with open(os.path.join(run, "wall_time_s.txt"), "w") as f:
                    f.write(f"{time.time() - t0:.1f}\n")
            with open(metrics_path) as f:
                m = json.load(f)
            wall = os.path.join(run, "wall_time_s.txt")
            m["time_s"] = float(open(wall).read()) if os.path.isfile(wall) else float("nan")
            results.setdefault(variant, []).append(m)
    cols = SHOWN + ("time_s",)
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


if __name__ == "__main__":
    main()
