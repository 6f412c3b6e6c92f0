"""Files written whole: small ones a daemon keeps beside its store (member.json,
flows.json) and the segments of a files sink."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: Path, text: str | bytes | Iterable[bytes], *,
                     sync_dir: bool = False) -> None:
    """Replace ``path`` with ``text`` (a str, bytes, or byte strings to join): a temp
    file of its own in the same directory, fsync, rename; with ``sync_dir`` the
    directory too, so the rename is durable. A reader sees the old file or the whole
    new one, never a part; writers racing on one path each rename a whole file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(text, str):
                f.write(text.encode())
            elif isinstance(text, bytes):
                f.write(text)
            else:
                f.writelines(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
