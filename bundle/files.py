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

"""Writing files so that a kill never leaves half of one: write a temporary file beside the target,
then rename it over the target (atomic on one file system). Every JSON, checkpoint and PNG that the
bundle keeps between commands is written this way."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write", "write_json_atomically", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """The temporary file for ``path``: hidden, beside it, named by this process (so a stale one can be
    told from a live writer's by its PID)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; when the block ends without error it replaces ``path``,
    otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomically(path: str | Path, content: Any) -> None:
    """``content`` as indented JSON at ``path``, written atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1))
