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

"""One training run per output folder.

Every file a run writes is written atomically, but two runs in one folder would still mix their
outputs file by file (``model.pt`` from one, ``checkpoint.pt`` and the split from the other). A
training run therefore takes a lock file in each of its folders (``ckpt_dir``, ``output_dir``) before
it reads any data: ``.run.lock`` holds the owner's PID, host and start time. A second run stops at
once with one line naming the owner; a lock left by a run that was killed (its PID no longer runs on
this host) is taken over with a warning. The lock is removed when the process exits.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import socket
from pathlib import Path
from typing import List, Sequence

from bundle.errors import BundleInputError

__all__ = ["LOCK_FILE", "lock_run_folders"]

LOCK_FILE = ".run.lock"
logger = logging.getLogger(__name__)
_held: List[Path] = []
_registered = False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # being written, or garbage: treated as stale below


def _release() -> None:
    for path in _held:
        if _owner(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
    _held.clear()


def lock_run_folders(folders: Sequence[str | os.PathLike], enabled: bool = True) -> List[Path]:
    """Take the run lock of each folder (created if needed) for this process.

    Args:
        folders: the run's output folders.
        enabled: False does nothing (the non-main processes of a distributed run).

    Returns:
        the lock files taken.

    Raises:
        BundleInputError: another running process holds a lock (the message names its PID), or a
            folder cannot be written.
    """
    if not enabled:
        return []
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    taken = []
    for folder in dict.fromkeys(Path(f).expanduser().resolve() for f in folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BundleInputError(f"cannot create the output folder {folder}: {e.strerror}") from e
        path = folder / LOCK_FILE
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except PermissionError as e:
                raise BundleInputError(f"the output folder {folder} is not writable ({e.strerror})") from e
            except FileExistsError:
                owner = _owner(path)
                if owner.get("pid") == os.getpid():
                    break  # ours already
                pid, host = owner.get("pid"), owner.get("host")
                if isinstance(pid, int) and (host != me["host"] or _running(pid)):
                    where = "" if host == me["host"] else f" on {host}"
                    raise BundleInputError(
                        f"another training (PID {pid}{where}, started {owner.get('started', '?')}) "
                        f"is writing to {folder}; wait for it, stop it, or give this run another --bundle_root "
                        f"(lock: {path})."
                    )
                logger.warning("Taking over the lock %s of a run that no longer runs (PID %s).", path, pid)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            _held.append(path)
            taken.append(path)
            break
    global _registered
    if taken and not _registered:
        atexit.register(_release)
        _registered = True
    return taken
