from .cross_modal_negative_miner import HardestNegativeMiner, TopKNegativeMiner

__all__ = ["HardestNegativeMiner", "TopKNegativeMiner"]
