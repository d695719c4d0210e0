"""A small tmpfs mounted for one fault case or test: a filesystem that can be filled up (needs root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def can_mount() -> bool:
    """Whether this process may mount a tmpfs: root and a working `mount`."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as probe:
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True
        ).returncode:
            return False
        subprocess.run(["umount", probe], check=True)
    return True


@contextmanager
def mounted(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (as mount takes it: 1m, 64m) on the existing directory `path`, unmounted after."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
