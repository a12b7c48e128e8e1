from bundle.networks.blocks.swin import FusedWindowAttention, SwinBlock, SwinBranch, SwinStage
from bundle.networks.blocks.tif import TIF, GlobalSelfAttention, TIFLevels, TIFTransformer

__all__ = ["TIF", "TIFLevels", "TIFTransformer", "GlobalSelfAttention", "FusedWindowAttention", "SwinBlock", "SwinStage", "SwinBranch"]
