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

"""Input errors that the bundle reports as one clear line instead of a traceback.

Library code raises :class:`BundleInputError` (the networks: ``SwinWeightsError``) like any exception
(so Python callers and tests can catch it). MONAI's config parser wraps exceptions raised while it builds a component
(``RuntimeError("Failed to instantiate ...") from e``), so on the command line the user would see a
long chained traceback; :func:`install_cli_error_hook`, run from each config's ``initialize`` list,
prints the :class:`BundleInputError` found anywhere in the chain as a single ``ERROR:`` line.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Type

__all__ = ["BundleInputError", "find_input_error", "flag", "install_cli_error_hook"]


class BundleInputError(ValueError):
    """Bad user input (missing folder, unpaired or unreadable file, size or channel mismatch, bad setting)."""


def find_input_error(exc: BaseException | None) -> Exception | None:
    """The first input error in ``exc``'s cause/context chain, or ``None``: a :class:`BundleInputError`,
    or the networks' own (``SwinWeightsError``; ``bundle.networks`` imports nothing of the rest)."""
    from bundle.networks.swin_weights import SwinWeightsError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (BundleInputError, SwinWeightsError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def flag(name: str, value: Any) -> bool:
    """A true/false setting as YAML gives it (a boolean) or as the command line does: MONAI's CLI parses
    ``--resume false`` with fire, which passes the word ``'false'`` as a string (and ``bool('false')`` is
    true). Anything else is a :class:`BundleInputError` naming the setting."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, bool):
        return value
    raise BundleInputError(f"--{name} {value!r}: give true or false.")


def install_cli_error_hook() -> bool:
    """Make an uncaught :class:`BundleInputError` (however wrapped) print one ``ERROR:`` line and exit 1.

    Other exceptions keep Python's usual traceback. Installing twice is harmless. Returns ``True`` so
    that a config's ``initialize`` list shows a value.
    """
    previous = sys.excepthook
    if getattr(previous, "_bundle_input_error_hook", False):
        return True

    def hook(exc_type: Type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        error = find_input_error(exc)
        if error is None:
            previous(exc_type, exc, tb)
            return
        sys.stderr.write(f"ERROR: {error}\n")
        sys.stderr.flush()

    hook._bundle_input_error_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    return True
