"""Configuration of ``pytest benchmarks --benchmark-only``.

The project's pytest configuration runs ``tests/`` only and adds ``--benchmark-skip``;
``--benchmark-only`` (which pytest-benchmark lets override ``--benchmark-skip``) runs the benchmarks,
typed at the repository root (whose conftest.py then collects this folder) or naming this folder.
Without ``--benchmark-only`` every benchmark here is skipped.

Sizes (environment variables, all optional):

- ``VSE_BENCH_DEVICE``: ``cuda`` (default when available) or ``cpu``.
- ``VSE_BENCH_SIZES``: comma-separated batch sizes. CPU default ``32,128,256,1024,4096,8192`` (32 and
  128: the batch sizes most people train with), with 8192 for the target rows only (the CPU targets
  of docs/benchmarks.md; ``VSE_BENCH_FULL=1`` runs every row there); CUDA default
  ``128,1024,4096,16384,65536``. Sizes given here run every row.
- ``VSE_BENCH_D``: embedding size (CPU 256, CUDA 1024).
- ``VSE_BENCH_DTYPES``: CPU ``float32``; CUDA ``bfloat16,float32``.
- ``VSE_BENCH_THREADS``: torch threads (default: torch's choice, the number of cores).
- ``VSE_BENCH_COMPILE=0``: leave out the torch.compile anchor (its first call compiles: about
  20 s on 2 CPU cores).
"""

from __future__ import annotations

import os
import sys

# Idle OpenMP threads sleep instead of spinning. On a machine shared with other processes, spinning
# threads of a 2-thread pool that get descheduled make small calls up to 100× slower and the
# medians meaningless; set OMP_WAIT_POLICY=ACTIVE to measure the spinning default. Read when the
# OpenMP runtime loads, i.e. before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def bench_device() -> torch.device:
    want = os.environ.get("VSE_BENCH_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _ints(name: str, default: str):
    return [int(s) for s in os.environ.get(name, default).split(",") if s.strip()]


def bench_config() -> dict:
    dev = bench_device()
    gpu = dev.type == "cuda"
    sizes = _ints("VSE_BENCH_SIZES", "128,1024,4096,16384,65536" if gpu else "32,128,256,1024,4096,8192")
    return {
        "device": dev,
        "sizes": sizes,
        # sizes where only the target rows run (test_bench_losses.BIG_ROWS; CPU default: the largest)
        "big_sizes": set()
        if (gpu or os.environ.get("VSE_BENCH_FULL") == "1" or "VSE_BENCH_SIZES" in os.environ)
        else {max(sizes)},
        "D": int(os.environ.get("VSE_BENCH_D", 1024 if gpu else 256)),
        "dtypes": [
            getattr(torch, s.strip())
            for s in os.environ.get("VSE_BENCH_DTYPES", "bfloat16,float32" if gpu else "float32").split(",")
        ],
        "compile": os.environ.get("VSE_BENCH_COMPILE", "1") != "0",
    }


if os.environ.get("VSE_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["VSE_BENCH_THREADS"]))


def pytest_report_header(config):
    c = bench_config()
    return (
        f"vse_losses benchmarks: device={c['device']} D={c['D']} sizes={c['sizes']} "
        f"dtypes={[str(d).replace('torch.', '') for d in c['dtypes']]} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    import bench_common

    bench_common.free_memory(bench_device())
