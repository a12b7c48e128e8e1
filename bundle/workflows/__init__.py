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

"""What the workflow configs run besides MONAI's own components: the plan from the data
(``planning``), checks of the command line's settings (``settings``), one run per folder (``locks``),
checkpoints that are written atomically and resumed safely (``checkpoints``), ignite handlers
(``handlers``), the optional moving average of the weights for validation and ``model.pt``
(``averaging``) and the whole-image / sliding-window inferer (``inferers``)."""
