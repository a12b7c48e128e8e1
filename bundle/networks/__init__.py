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

"""Network components: use them from Python or from MONAI configs by ``_target_``."""

from bundle.networks.blocks import TIF
from bundle.networks.nets import PRESETS, BasicUNetTIF, DSTransUNet, SwinUNETRTIF, convert_authors_state_dict
from bundle.networks.swin_weights import SwinWeightsError, SwinWeightsReport, load_swin_weights

__all__ = [
    "TIF",
    "DSTransUNet",
    "PRESETS",
    "convert_authors_state_dict",
    "BasicUNetTIF",
    "SwinUNETRTIF",
    "load_swin_weights",
    "SwinWeightsError",
    "SwinWeightsReport",
]
