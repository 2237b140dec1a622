"""Owner-only files: what every Sekisho process creates is 0600 in 0700 folders.

The data folder holds the CA's keys and store, the gateway's argon2id hashes and their SQLite
write-ahead logs. A mode fixed after the fact (a chmod once the file exists) leaves a window,
and misses files a library creates by itself (SQLite's `-wal` and `-shm`), so every process
sets its umask before it creates anything, and the database files are created 0600 before
SQLite opens them (SQLite gives its `-wal`/`-shm` the mode of the database file).
"""

from __future__ import annotations

import os
from pathlib import Path

OWNER_ONLY_UMASK = 0o077
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def restrict_new_files() -> None:
    """Make every file and folder this process (and its children) creates owner-only.

    Called first thing by `sekisho-ca`, `sekisho-gateway` and the `make run` launcher.
    """
    os.umask(OWNER_ONLY_UMASK)


def private_directory(path: Path) -> None:
    """Create `path` (and missing parents) 0700, and tighten it to 0700 if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def private_database(path: Path) -> None:
    """Prepare a SQLite database path: its folder 0700, the file created 0600 from its first
    byte, and an existing file and its `-wal`/`-shm`/`-journal` tightened to 0600."""
    private_directory(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for candidate in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)
        except FileNotFoundError:
            continue
