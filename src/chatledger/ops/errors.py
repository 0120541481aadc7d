"""What can go wrong in a maintenance command, each error worded as the one line the user sees.

OpsError
 +-- DatabaseMissing        the file does not exist
 +-- DatabaseLocked         another process holds a lock we could not wait out
 +-- NotADatabase           not SQLite at all (random bytes, a text file...)
 +-- DatabaseCorrupt        SQLite, but damaged ("database disk image is malformed")
 +-- NotAChatledgerDatabase SQLite, but without our tables
 +-- Refused                the command will not do it as asked (restore over a busy db, overwrite...)
 +-- NotFound               a session, a table... that is not there
"""

from __future__ import annotations

from pathlib import Path


class OpsError(Exception):
    pass


class DatabaseMissing(OpsError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"database {path} does not exist")


class DatabaseLocked(OpsError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"database {path} is locked by another process; try again later")


class NotADatabase(OpsError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is not a SQLite database (or its header is corrupt)")


class DatabaseCorrupt(OpsError):
    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"database {path} is corrupt: {detail}")


class NotAChatledgerDatabase(OpsError):
    pass


class Refused(OpsError):
    pass


class NotFound(OpsError):
    pass
