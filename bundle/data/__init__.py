"""The data side: pairing image and mask files and checking them (``datalists``), reading and writing
image files (``image_files``), the bundle's MONAI transforms (``transforms``) and the generated demo
set (``demo``). Imports nothing from ``bundle.workflows`` or ``bundle.export``."""
