"""DS-TransUNet and its Transformer Interactive Fusion (TIF) block as MONAI components and bundle."""

__version__ = "0.1.0"
