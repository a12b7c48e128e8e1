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

"""The data side: pairing image and mask files and checking them (``datalists``), reading and writing
image files (``image_files``), the bundle's MONAI transforms (``transforms``) and the generated demo
set (``demo``). Imports nothing from ``bundle.workflows`` or ``bundle.export``."""
