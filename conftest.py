"""``pytest --benchmark-only`` typed at the repository root runs the benchmarks.

The project's pytest configuration collects ``tests/`` and skips benchmarks (``--benchmark-skip``);
with ``--benchmark-only`` and no paths given, ``benchmarks/`` is collected instead, so the command
users are told to type measures something. Named paths are left as they are.
"""

import os

import pytest


@pytest.hookimpl(tryfirst=True)  # before tests/conftest.py's hook imports torch
def pytest_configure(config):
    if not config.getoption("benchmark_only", False):
        return
    # read when torch loads OpenMP; benchmarks/conftest.py says why idle threads should sleep
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        config.args[:] = [str(config.rootpath / "benchmarks")]
