# Copyright (c) DS-TransUNet MONAI bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Export a trained run as a MONAI model-zoo bundle: a self-contained folder and a zip of it.

    python -m bundle.export --name ds_transunet_polyp_segmentation
    python -m bundle.export --name unet_tif_polyp_segmentation --config_file configs/networks/unet_tif.yaml
    python -m bundle.export --name my_model --bundle_root RUN_DIR --preset small --out_channels 3 --onnx

Give it the folder training wrote to (``--bundle_root``: ``models/model.pt``, ``models/checkpoint.pt``,
``runs/train/datalist.json`` and, if you ran ``configs/evaluate.yaml``, ``eval/``) and the same network
config and settings the model was trained with: ``--config_file`` (merged over the train and
inference configs, as in training) and any ``--<id> <value>`` override (``--preset small``,
``--roi_size "[96, 96]"``, ``--max_epochs 100`` ...). It writes ``OUTPUT/NAME/`` and
``OUTPUT/NAME_vVERSION.zip`` (the folder at its top level, as zoo zips are):

- ``configs/``: ``metadata.json`` (MONAI's 20240725 schema; the package versions of this machine),
  ``inference.json`` (standalone: train.yaml's network, settings and transforms written out),
  ``train.json``, and the overlays on it ``evaluate.json``, ``multi_gpu_train.json`` and
  ``multi_gpu_evaluate.json`` (4-space JSON, as the zoo formats them), ``logging.conf``;
- ``models/model.pt`` (weights only) and ``models/model.ts`` (MONAI's ``ckpt_export``, traced: the
  networks cannot be scripted, MONAI's 2D ``PatchEmbed`` indexes a third patch size), optionally
  ``models/model.onnx`` checked against ONNX Runtime;
- ``bundle/``: the Python code the configs name, so the folder runs without this repository installed;
- ``docs/README.md`` (the zoo's model card with the run's measured figures), ``docs/data_license.txt``,
  ``LICENSE``, ``large_files.yml`` (files over 25 MB with their MD5).

Nothing already exported is replaced unless ``--overwrite`` is given; the new bundle is built beside
the old one and swapped in only when complete.
"""

from bundle.export.build import export_bundle
from bundle.export.cli import main
from bundle.export.configs import zoo_config

__all__ = ["export_bundle", "zoo_config", "main"]
