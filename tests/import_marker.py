"""A module that says which process imported it (``config check`` must not import
handlers into the CLI's own process): it appends its importer's pid to the file
named by ``JOBSUP_TEST_IMPORT_MARKER``."""

from __future__ import annotations

import os

_marker = os.environ.get("JOBSUP_TEST_IMPORT_MARKER")
if _marker:
    with open(_marker, "a") as fh:
        fh.write(f"{os.getpid()}\n")


def handler(payload: object, ctx: object) -> None:
    """Does nothing; it only has to exist."""
