from bundle.networks.nets.ds_transunet import PRESETS, DSTransUNet, convert_authors_state_dict

__all__ = ["DSTransUNet", "PRESETS", "convert_authors_state_dict"]
