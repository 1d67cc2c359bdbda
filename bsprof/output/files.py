"""Files bsprof writes are written whole or not at all: a temporary file in the same folder, fsync, rename.

A reader never sees a half-written report; a crash, a full disk or a kill mid-write leaves the previous file (or
none) in place, and two runs writing the same path leave one of the two complete files.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def special(path: str | Path) -> bool:
    """Whether ``path`` is a device, a named pipe, or a link to an open file descriptor (``/dev/stdout`` links to
    ``/proc/self/fd/1``, a regular file when the shell redirected it): written in place, never replaced (a rename
    would put a regular file where the device or the link was). Any other link is replaced, never written through
    (a report's name linked to another file leaves that file as it was)."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return os.readlink(path).startswith(("/proc/", "/dev/fd/"))
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without error, move it onto ``path``. A
    ``special`` path (a device, a pipe) is yielded as it is: there is nothing to keep whole."""
    path = Path(path)
    if special(path):
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is shared like any file the user writes
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


LOCK_NAME = ".bsprof.lock"


def check_folder(folder: str | Path, flag: str = "--out", files: tuple[str, ...] = ()) -> Path:
    """Create ``folder`` if needed and prove it writable with a probe file, before any work is done; a
    ``ConfigError`` naming ``flag`` if it is a file, lies under a file, cannot be written, or holds a folder where
    one of the ``files`` it will write goes."""
    from bsprof.errors import ConfigError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"cannot write to {folder}: it is a file, not a folder", f"pass a folder to {flag}")
    blocked = [name for name in files if (folder / name).is_dir()]
    if blocked:
        raise ConfigError(f"cannot write {folder / blocked[0]}: a folder of that name is in the way",
                          f"remove or rename it, or pass another folder to {flag}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".bsprof-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"cannot write to {folder}: {e.strerror or e}", f"pass a writable folder to {flag}")
    return folder


def check_file(path: str | Path, flag: str) -> Path:
    """``check_folder`` for the folder of an output file; a ConfigError if ``path`` is a folder."""
    from bsprof.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder, not a file", f"pass a file path to {flag}")
    if special(path):  # /dev/stdout, a pipe: written in place
        return path
    try:
        check_folder(path.parent, flag)
    except ConfigError as e:  # the flag takes a file: say so in the fix
        raise ConfigError(e.message, f"pass a file in a writable folder to {flag}") from None
    return path


@contextlib.contextmanager
def folder_lock(folder: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder/.bsprof.lock`` (fcntl.flock) while a run writes there: one run at a time per output folder.
    A second run gets a ConfigError naming the first one's pid. The lock file is opened without following a
    symlink, and removed when the run ends."""
    from bsprof.errors import ConfigError

    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; runs are not serialised
        yield Path(folder)
        return
    path = Path(folder) / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise ConfigError(f"cannot create the lock file {path}: {e.strerror or e}",
                              f"pass a writable folder to {flag}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"another bsprof run (pid {other}) is writing to {folder}",
                              f"wait for it to finish, or pass another {flag}")
        try:  # the file may have been removed by the run that held it just before: lock the one on disk
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield Path(folder)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
