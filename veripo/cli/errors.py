"""How the command reports an expected failure: ``error: ...`` on stderr, exit code 2 (docs/reliability.md)."""

from __future__ import annotations

import errno

import typer


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` (red, on stderr) and return the exit with code 2 to raise."""
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(2)


def describe_os_error(error: OSError) -> str:
    """An ``OSError`` as one line naming the file: disk full, permission denied, a file where a folder is
    expected, ..."""
    what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system"}.get(error.errno, error.strerror or type(error).__name__)
    where = error.filename if error.filename is not None else ""
    if error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return f"{where}: {what}" if where else f"{what} ({error})"
