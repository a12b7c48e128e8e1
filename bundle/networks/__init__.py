"""Network components: use them from Python or from MONAI configs by ``_target_``."""

from bundle.networks.blocks import TIF
from bundle.networks.nets import PRESETS, BasicUNetTIF, DSTransUNet, SwinUNETRTIF, convert_authors_state_dict
from bundle.networks.swin_weights import SwinWeightsError, SwinWeightsReport, load_swin_weights

__all__ = ["TIF", "DSTransUNet", "PRESETS", "convert_authors_state_dict", "BasicUNetTIF", "SwinUNETRTIF",
           "load_swin_weights", "SwinWeightsError", "SwinWeightsReport"]
