"""`import vse_losses` works where triton is not installed (CPU-only and macOS installs), and a
triton older than the kernels were checked with is not used."""

import os
import subprocess
import sys

# run in a fresh process after SETUP; EXPECTED: what the refusal of impl="triton" must say
CHECK = """
{setup}
import torch, vse_losses
from vse_losses.ops import triton_available
assert not triton_available()
x, y = torch.randn(6, 4), torch.randn(6, 4)
assert torch.allclose(vse_losses.MaxViolationLoss(impl="auto")(x, y), vse_losses.MaxViolationLoss(impl="dense")(x, y))
try:
    vse_losses.MaxViolationLoss(impl="triton")(x, y)
except ValueError as e:
    assert {expected!r} in str(e), str(e)
else:
    raise AssertionError("impl='triton' must raise ValueError here")
print("ok")
"""


def _check(setup: str, expected: str, env=None):
    code = CHECK.format(setup=setup, expected=expected)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_and_losses_without_triton():
    # any `import triton` now raises ImportError, as without the package
    _check('import sys\nsys.modules["triton"] = None', "needs triton")


def test_triton_older_than_checked_is_not_used(tmp_path):
    # a stand-in triton 3.2 (torch 2.6's) ahead of any installed one; the interpreter is asked
    # for, so that only the version keeps the kernels from running
    pkg = tmp_path / "triton"
    (pkg / "language").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '3.2.0'\n")
    (pkg / "language" / "__init__.py").write_text("constexpr = object\n")
    env = dict(
        os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    setup = """
import triton
from vse_losses.ops.triton_common import version_tuple
assert triton.__version__ == "3.2.0", triton.__file__
assert version_tuple("3.2.0") < (3, 3) <= version_tuple("3.3.1") < version_tuple("3.10.0+gitabc") == (3, 10)
"""
    _check(setup, "triton >= 3.3 (found 3.2.0)", env)
