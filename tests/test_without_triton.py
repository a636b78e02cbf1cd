"""`import vse_losses` works where triton is not installed (CPU-only and macOS installs), and a
triton older than the kernels were checked with is not used."""

import os
import subprocess
import sys

CODE = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError, as without the package
import torch, vse_losses
from vse_losses.ops import triton_available
assert not triton_available()
x, y = torch.randn(6, 4), torch.randn(6, 4)
assert torch.allclose(vse_losses.MaxViolationLoss(impl="auto")(x, y), vse_losses.MaxViolationLoss(impl="dense")(x, y))
try:
    vse_losses.MaxViolationLoss(impl="triton")(x, y)
except ValueError as e:
    assert "needs triton" in str(e)
else:
    raise AssertionError("impl='triton' without triton must raise ValueError")
print("ok")
"""


def test_import_and_losses_without_triton():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


OLD_TRITON = """
import torch, vse_losses
from vse_losses.ops import triton_available
from vse_losses.ops.triton_negative_max import version_tuple
import triton
assert triton.__version__ == "3.2.0", triton.__file__
assert not triton_available()
assert version_tuple("3.2.0") < (3, 3) <= version_tuple("3.3.1") < version_tuple("3.10.0+gitabc") == (3, 10)
x, y = torch.randn(6, 4), torch.randn(6, 4)
assert torch.allclose(vse_losses.MaxViolationLoss(impl="auto")(x, y), vse_losses.MaxViolationLoss(impl="dense")(x, y))
try:
    vse_losses.MaxViolationLoss(impl="triton")(x, y)
except ValueError as e:
    assert "triton >= 3.3 (found 3.2.0)" in str(e), str(e)
else:
    raise AssertionError("impl='triton' with triton 3.2 must raise ValueError")
print("ok")
"""


def test_triton_older_than_checked_is_not_used(tmp_path):
    # a stand-in triton 3.2 (torch 2.6's) ahead of any installed one; the interpreter is asked
    # for, so that only the version keeps the kernels from running
    pkg = tmp_path / "triton"
    (pkg / "language").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '3.2.0'\n")
    (pkg / "language" / "__init__.py").write_text("constexpr = object\n")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", OLD_TRITON], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
