"""The one way a name becomes a path: :func:`under` joins names under a root directory
(``retrain.dataset_dir``, ``data_dir``) and refuses whatever could leave it.

A name that reaches the file system (an experiment's dataset directory, a dataset
version, an adapter) is a single path component: not empty, not ``.`` or ``..``, no
``/`` or ``\\``, no control character; and the joined path, resolved (symbolic links
followed), must still lie under the root. Names accepted by the API already follow
:data:`gateway.core.config.NAME_PATTERN`; this is the last check, at the place the
path is built.
"""

from __future__ import annotations

from pathlib import Path

from gateway.core.errors import InvalidRequest


class UnsafePath(InvalidRequest):
    code = "invalid_name"


def safe_part(part: str) -> bool:
    """Whether ``part`` is one plain path component."""
    return (
        bool(part)
        and part not in (".", "..")
        and "/" not in part
        and "\\" not in part
        and not any(ord(c) < 32 or ord(c) == 127 for c in part)
    )


def under(root: Path, *parts: str, param: str = "name") -> Path:
    """``root / part / …``, or :class:`UnsafePath` (a 400 naming ``param``) when a part is
    not one plain component or the result would lie outside ``root``."""
    for part in parts:
        if not isinstance(part, str) or not safe_part(part):
            raise UnsafePath(
                f"'{part}' cannot be used as a name here: a name is one path component "
                "(no '/', '\\', '..' or control characters).",
                param=param,
            )
    path = root.joinpath(*parts)
    base = root.resolve()
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePath(f"'{'/'.join(parts)}' would leave {root}.", param=param)
    return path
