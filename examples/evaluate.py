#!/usr/bin/env python
"""Evaluate a saved VSE++ model by the paper's protocol.

    python examples/evaluate.py runs/runX/model_best.pth.tar                 # embedded data, test split
    python examples/evaluate.py CHECKPOINT --data_path DATA --split test     # Flickr30K/8K: the 1000 test images
    python examples/evaluate.py CHECKPOINT --data_path DATA --data_name coco_precomp --split testall --fold5
                                                                             # COCO 1K (5 folds) and 5K
    python examples/evaluate.py CHECKPOINT --data_path DATA --data_name coco --split test --fold5
                                                                             # the same from COCO's images
    python examples/evaluate.py runs/coco_vse++/model_best.pth.tar --data_path DATA --vocab_path vocab
                                                                             # a model of the original VSE++ code

COCO's test splits: coco_precomp's ``test`` is the first 1000 of the 5000 test images (a single 1K
fold) and its ``testall`` all 5000; with the images (``--data_name coco``) ``test`` and ``testall``
are both the 5000 images of Karpathy's test split. 5000 images without ``--fold5`` give the 5K
figures only. train_coco.py's final test takes the 5000 images, with the folds, in both layouts
(coco_precomp: its ``testall``, when ``testall_ims.npy`` is there).

Prints the table train_coco.py prints (R@1, R@5, R@10, medr, meanr per direction, rsum).
"""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import vse_losses  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vse.evaluate_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
