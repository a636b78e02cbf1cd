"""`import vse_losses` works where triton is not installed (CPU-only and macOS installs)."""

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
