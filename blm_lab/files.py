"""Reading inputs and writing outputs safely: checks before any work, atomic writes, clear errors.

Every file blm_lab writes goes through ``atomic_write``: a temporary file beside the target, fsynced,
then renamed over it, so a killed process leaves the old file or the new one, never a torn one.
The ``check_*`` functions run before the work starts, so that a bad path is reported at once and
nothing is written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import PathError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    A process killed at any moment leaves either the previous file or the new one, never a torn one,
    and no temp file survives an exception. An OS failure (no space, no permission) is a PathError.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise PathError(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose a writable location") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the result is as readable as any file
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise PathError(f"cannot write {str(path)!r}: {exc.strerror or exc}; nothing was written") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def check_input_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """``path`` as a Path if it is a readable regular file; otherwise a PathError saying what is wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(f"{what} {str(path)!r} is a directory, not a file; pass the path of a file")
    if not path.exists():
        raise PathError(f"{what} not found: {str(path)!r}; check the path")
    if not path.is_file():
        raise PathError(f"{what} {str(path)!r} is not a regular file; pass the path of a file")
    if not os.access(path, os.R_OK):
        raise PathError(f"cannot read {what} {str(path)!r} (permission denied); fix its permissions")
    return path


def read_input(path: str | os.PathLike, what: str = "input file") -> bytes:
    """The bytes of a file checked by ``check_input_file``; a read failure is a PathError, not a traceback."""
    path = check_input_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PathError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}; check the file") from None


def check_output_file(path: str | os.PathLike, *, force: bool = False, inputs=()) -> Path:
    """``path`` as a Path if a file may be written there: not a directory, not one of ``inputs``, not an
    existing file unless ``force``, in an existing, writable directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(f"output {str(path)!r} is a directory; give the path of a file to write")
    for source in inputs:
        if path.exists() and path.resolve() == Path(source).expanduser().resolve():
            raise PathError(f"output {str(path)!r} is the input file; choose another output path")
    if path.exists() and not force:
        raise PathError(f"output {str(path)!r} already exists; pass --force to overwrite it")
    parent = path.parent
    if not parent.is_dir():
        raise PathError(f"output directory {str(parent)!r} does not exist; create it first")
    if not _writable_dir(parent):
        raise PathError(f"cannot write into {str(parent)!r} (permission denied); choose a writable location")
    return path


def check_output_dir(path: str | os.PathLike, *, keep: bool = False, force: bool = False,
                     what: str = "output directory", fix: str = "pass --force to start over there, or choose "
                                                               "another directory") -> Path:
    """``path`` as a Path if a run may write into it: not a file; empty or missing, unless ``keep`` (the
    caller continues what is there, e.g. --resume) or ``force`` (the caller replaces it)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {str(path)!r} is a file, not a directory; give a directory path")
    if path.is_dir() and not keep and not force and any(path.iterdir()):
        raise PathError(f"{what} {str(path)!r} is not empty; {fix}")
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise PathError(f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    if existing is not None and not _writable_dir(existing):
        raise PathError(f"cannot write into {str(existing)!r} (permission denied); choose a writable location")
    return path


def _writable_dir(path: Path) -> bool:
    """Whether files can be created in ``path``: os.access, then a real probe (root passes os.access everywhere)."""
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".blm_probe.", dir=path)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return False
        raise PathError(f"cannot write into {str(path)!r}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return True
