"""Triton launches on the current CUDA device, not on its arguments': every launch of the library's
kernels goes through ``triton_common.jitted``'s launcher, which makes the first tensor argument's
device current for the launch. No second GPU here: the device switch is observed by replacing
``torch.cuda.current_device`` and the launched kernel."""

import contextlib

import torch

from vse_losses.ops import triton_common as tc


def test_launch_device_switches_only_to_another_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    guard = tc.launch_device(torch.device("cuda:1"))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    for same in (torch.device("cuda:0"), torch.device("cpu"), torch.device("meta")):
        assert isinstance(tc.launch_device(same), contextlib.nullcontext)


def test_a_launch_runs_inside_its_first_tensors_device(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def record(device):
        entered.append(device)
        yield

    launched = []

    class FakeKernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append((grid, entered[-1], args[1:], kwargs))

    monkeypatch.setattr(tc, "launch_device", record)
    x = torch.empty(2, device="meta")
    tc._Launcher(FakeKernel())[(3, 1)](3, x, 7, BLOCK=16)
    assert entered == [x.device]
    assert launched == [((3, 1), x.device, (x, 7), {"BLOCK": 16})]


def test_every_kernel_launch_goes_through_the_launcher():
    """No kernel module jits or launches a kernel itself: only ``jitted(fn)[grid](...)``."""
    import pathlib

    ops_dir = pathlib.Path(tc.__file__).parent
    modules = sorted(ops_dir.glob("triton_*.py"))
    assert len(modules) >= 8
    for path in modules:
        if path.name == "triton_common.py":
            continue
        src = path.read_text()
        for bypass in ("triton.jit", "_jit(", ".kernel[", "@jit"):
            assert bypass not in src, (path.name, bypass)
        if "_kernel(" in src:  # a module with kernels launches them through jitted
            assert "jitted(" in src, path.name
