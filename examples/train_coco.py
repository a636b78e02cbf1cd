#!/usr/bin/env python
"""Train VSE++ with the vse_losses losses and report the paper's retrieval metrics.

    python examples/train_coco.py                       # embedded synthetic data, minutes on a CPU
    python examples/train_coco.py --max_violation       # the same with MH (VSE++)
    python examples/train_coco.py --data_path DATA --data_name coco_precomp --max_violation
    python examples/train_coco.py --data_path DATA --data_name f30k --cnn_type resnet152 \\
        --cnn_weights resnet152.pth --finetune --max_violation

The flags keep the original VSE++ code's names and defaults (``--help`` lists them).
"""

import os
import sys

# Many threads waiting actively for each other are slow on a busy CPU; let idle ones sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import vse_losses  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vse.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
