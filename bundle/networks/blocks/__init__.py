from bundle.networks.blocks.swin import FusedWindowAttention, SwinBlock, SwinBranch, SwinStage
from bundle.networks.blocks.tif import TIF, GlobalSelfAttention, TIFTransformer

__all__ = ["TIF", "TIFTransformer", "GlobalSelfAttention", "FusedWindowAttention", "SwinBlock", "SwinStage", "SwinBranch"]
