"""Files written whole or not at all, and the name of the checkpoint a run resumes from: used by the core
(checkpoints, the token cache) and the runtime (run dirs, summaries) alike."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

LAST = "last.ckpt"  # the checkpoint a run resumes from


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file + rename: a kill or a full disk mid-write leaves the previous file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # several processes may write one file
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException as err:  # no half-written temporary file stays behind
        with contextlib.suppress(OSError):  # a read-only file system refuses even this
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            err.filename = str(path)  # the file the user knows (a failed write() names none)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
