"""Atomic file writes that survive a crash, for the reduced Parquet files and the condensers' checkpoints.

:func:`write_atomic` writes to a temporary file beside the target, flushes it to disk and renames it over
the target, so a reader sees the old file or the whole new one, never a part. The temporary name is
``.NAME.PID.RANDOM.tmp`` (hidden, and no reader globs ``*.tmp``); a writer killed with SIGKILL leaves it
behind, and the next write to the same target removes every such file whose writer process is gone.
Files are created with mode 0666 less the umask, like any file the user's tools create.

Failures to write (a read-only directory, an immutable file, a parent that is a file, a full disk) become
one :class:`~smallset.errors.SmallsetError` sentence naming the option that chose the path.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable

from smallset.errors import SmallsetError

LEGACY_MAX_AGE_S = 3600  # temporary files of older versions carry no pid: removed once this old


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` that records this process's id."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def stale_temps(path: Path) -> list[Path]:
    """Temporary files beside ``path`` left by writers of ``path`` that no longer run."""
    path = Path(path)
    ours = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.tmp$")
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp$")  # tempfile.mkstemp, before pids
    out = []
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return []
    now = time.time()
    for e in entries:
        m = ours.match(e.name)
        try:
            if m is not None and not _pid_alive(int(m.group(1))):
                out.append(Path(e.path))
            elif m is None and legacy.match(e.name) and now - e.stat(follow_symlinks=False).st_mtime > LEGACY_MAX_AGE_S:
                out.append(Path(e.path))
        except OSError:
            continue
    return out


def remove_stale_temps(path: Path) -> int:
    """Remove :func:`stale_temps` of ``path``; returns how many were removed."""
    n = 0
    for p in stale_temps(path):
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def cannot_write(path: Path, e: OSError, option: str | None) -> SmallsetError:
    """One sentence for an OS error while writing ``path`` (``option`` names the flag that chose it)."""
    what = f"{option} {path}" if option else str(path)
    if isinstance(e, (FileExistsError, NotADirectoryError)) or e.errno in (errno.EEXIST, errno.ENOTDIR):
        probe = path.parent
        while str(probe) not in ("", ".", "/") and not probe.exists():
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            return SmallsetError(f"{what} cannot be written: {probe} is a file, not a directory.", option=option)
    if isinstance(e, IsADirectoryError):
        return SmallsetError(f"{what} is a directory; give a file name.", option=option)
    reason = e.strerror or str(e) or type(e).__name__
    hint = "choose a writable place" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "choose another place"
    return SmallsetError(f"{what} cannot be written ({reason}); {hint}.", option=option)


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[str], None], *, option: str | None = None) -> Path:
    """Create ``path`` through ``write(temporary_path)`` atomically (see the module docstring).

    ``option`` names the setting that chose ``path`` (``output``, ``checkpoint_dir``) in error sentences.
    Any exception (a signal's KeyboardInterrupt included) removes the temporary file and leaves an existing
    ``path`` untouched."""
    from smallset.interrupt import check_stop

    path = Path(path)
    check_stop()
    if path.is_dir():
        raise SmallsetError(f"{option + ' ' if option else ''}{path} is a directory; give a file name.", option=option)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(path, e, option) from None
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
    except OSError as e:
        raise cannot_write(path, e, option) from None
    try:
        write(str(tmp))
        _fsync(tmp)
        check_stop()  # a run stopped meanwhile writes nothing
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            raise cannot_write(path, e, option) from None
        raise
    _fsync(path.parent, directory=True)
    return path
