"""Writing files so that a kill never leaves half of one: write a temporary file beside the target,
then rename it over the target (atomic on one file system). Every JSON, checkpoint and PNG that the
bundle keeps between commands is written this way."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

__all__ = ["atomic_write", "write_json_atomically", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """The temporary file for ``path``: hidden, beside it, named by this process (so a stale one can be
    told from a live writer's by its PID)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_write(path: Union[str, Path]) -> Iterator[Path]:
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


def write_json_atomically(path: Union[str, Path], content: Any) -> None:
    """``content`` as indented JSON at ``path``, written atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1))
