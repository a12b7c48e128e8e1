from bundle.networks.nets.ds_transunet import PRESETS, DSTransUNet, convert_authors_state_dict
from bundle.networks.nets.swin_unetr_tif import DualScaleSwinViT, SwinUNETRTIF
from bundle.networks.nets.unet_tif import BasicUNetTIF

__all__ = ["DSTransUNet", "PRESETS", "convert_authors_state_dict", "BasicUNetTIF", "SwinUNETRTIF", "DualScaleSwinViT"]
