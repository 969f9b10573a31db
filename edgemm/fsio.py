"""The filesystem as users meet it: faults as typed errors, and files judged by ``stat`` first.

* :func:`os_error` maps an :class:`OSError` (full disk, file size limit, permissions, read-only
  filesystem, wrong kind of path, address in use …) to the typed :class:`EdgemmError` that names
  the path and says what to do; :func:`os_errors` applies it to a block. Writers and the CLI use
  it, so an environmental fault is never a traceback.
* :func:`stat_input` / :func:`read_bounded` / :func:`open_input` read a file a user pointed at:
  ``stat`` first, so a directory, FIFO, device or socket is refused as what it is without being
  opened for reading (a FIFO would block, ``/dev/zero`` never ends), and a file over its cap is
  refused by its size without being read (a sparse 2 GB file costs nothing); what is read is
  bounded even if the file grows meanwhile.
* :func:`check_output_file` / :func:`check_output_dir` refuse an output path of the wrong kind
  before any work; :func:`require_free_space` refuses a write that cannot fit, saying what it
  needs, the headroom it keeps, and what is free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edgemm.errors import (
    AddressError,
    AddressInUseError,
    DiskFullError,
    EdgemmError,
    FileSizeLimitError,
    InputPathError,
    InputTooLargeError,
    PathPermissionError,
    ReadOnlyFilesystemError,
    StorageError,
)

PathLike = str | os.PathLike[str]

# Errors of the machine, never of edgemm: mapped wherever they surface, even without a path.
# ENOENT and EEXIST are not among them: on a path edgemm chose itself they are bugs, so only
# callers that know the path came from the user map them (``os_error(..., user_path=True)``).
ENVIRONMENTAL = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
    errno.EMFILE, errno.ENFILE, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP,
    errno.ETXTBSY, errno.EADDRINUSE, errno.EADDRNOTAVAIL,
})
_USER_PATH = frozenset({errno.ENOENT, errno.EEXIST})

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISREG, "a file"),
)


def kind(mode: int) -> str:
    """What a ``st_mode`` describes, for messages: ``"a file"``, ``"a directory"``, ``"a FIFO"`` …"""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a special file"


def human_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``; binary units, one decimal (bytes below 1 KiB)."""
    if size < 1024:
        return f"{int(size)} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


# --- OSError → typed error ----------------------------------------------------------------------


def os_error(exc: OSError, action: str | None = None, *, path: PathLike | None = None,
             user_path: bool = False) -> EdgemmError | None:
    """The typed error for an :class:`OSError` that the machine caused, or ``None`` for the others.

    Args:
        exc: The error the operating system raised.
        action: What was being done, naming the user's path (``"write the archive out.edgemm"``);
            the message then reads ``Cannot <action>: <reason>.``
        path: The path to name in the reason (default: :func:`error_path`); callers pass the
            user-visible name where the error names a private temporary file.
        user_path: The path came from the user, so "does not exist" and "already exists" are
            the user's to fix (otherwise they are edgemm's bugs and keep their traceback).

    Returns:
        A :class:`DiskFullError` / :class:`FileSizeLimitError` / :class:`StorageError` (exit 1),
        a :class:`PathPermissionError` / :class:`ReadOnlyFilesystemError` /
        :class:`InputPathError` / :class:`AddressError` (exit 2) with ``details`` ``{path,
        errno}`` — or ``None`` when the error is not an environmental fault (a bug: re-raise it).
    """
    code = exc.errno
    if isinstance(exc, socket.gaierror) or code not in ENVIRONMENTAL | (_USER_PATH if user_path else set()):
        return None
    subject = path if path is not None else error_path(exc)
    shown = os.fsdecode(subject) if subject is not None else None
    where = f" {shown}" if shown else ""
    details = {"path": shown, "errno": errno.errorcode.get(code, str(code))}
    if code in (errno.ENOSPC, errno.EDQUOT):
        holder = _existing_ancestor(Path(shown)) if shown else None
        reason = ("the disk quota is exhausted" if code == errno.EDQUOT else "no space left on the device") + \
            (f" that holds {shown}" if shown else "") + (" (out of space or of inodes)" if code == errno.ENOSPC else "")
        hint = (f"Free space there (`df -h {holder}`; `df -i` for inodes) or choose a location on a larger disk."
                if holder else "Free disk space (`df -h`; `df -i` for inodes) or use a larger disk.")
        return DiskFullError(_sentence(action, reason), hint=hint, details=details)
    if code == errno.EFBIG:
        reason = f"{shown or 'a file'} would exceed the largest file this process or filesystem may write"
        return FileSizeLimitError(_sentence(action, reason), details=details,
                                  hint="Raise the file size limit (`ulimit -f`, systemd `LimitFSIZE=`) "
                                       "or write to a filesystem that allows larger files.")
    if code == errno.EROFS:
        return ReadOnlyFilesystemError(_sentence(action, f"{shown or 'the path'} is on a read-only filesystem"),
                                       hint="Choose a writable location, or remount that filesystem read-write.",
                                       details=details)
    if code in (errno.EACCES, errno.EPERM):
        return PathPermissionError(_sentence(action, f"permission denied{' on' + where if where else ''}"),
                                   hint="Check the owner and mode of that path and of its parent directory, "
                                        "or run as a user who may use it.", details=details)
    if code in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        cls = AddressInUseError if code == errno.EADDRINUSE else AddressError
        return cls(_sentence(action, exc.strerror or "the address cannot be used"), details=details,
                   hint="Pick another port (or 0 for any free one).")
    if code in (errno.EMFILE, errno.ENFILE):
        return StorageError(_sentence(action, "too many open files"), details=details,
                            hint="Raise the open-file limit (`ulimit -n`, systemd `LimitNOFILE=`).")
    if code == errno.EIO:
        return StorageError(_sentence(action, f"input/output error{' on' + where if where else ''}"),
                            hint="The disk or the network filesystem may be failing: check `dmesg`, then retry.",
                            details=details)
    return InputPathError(_sentence(action, _path_reason(code, shown, exc.strerror)),
                          hint="Check the path.", details=details)


def error_path(exc: OSError) -> str | bytes | None:
    """The path an :class:`OSError` is about: of a two-path call (``symlink``, ``rename``) the
    second, which was being created, else the only one (``None`` for ``write()`` and the like)."""
    return exc.filename2 if exc.filename2 is not None else exc.filename


def _path_reason(code: int | None, shown: str | None, strerror: str | None) -> str:
    """The reason a path of the wrong kind was refused (ENOTDIR names the component that is a file)."""
    name = shown or "the path"
    if code == errno.ENOTDIR and shown:
        blocker = _blocking_ancestor(Path(shown))
        if blocker is not None:
            return blocker
    if code == errno.EEXIST and shown and os.path.lexists(shown):
        found = kind(os.lstat(shown).st_mode)
        return f"{name} already exists" + ("" if found == "a directory" else f" and is {found}, not a directory")
    reasons = {errno.ENOTDIR: f"a component of {name} is not a directory",
               errno.EISDIR: f"{name} is a directory, not a file",
               errno.ENOENT: f"{name} does not exist",
               errno.ENAMETOOLONG: f"{name} is too long a file name",
               errno.ELOOP: f"{name} has too many levels of symbolic links",
               errno.ETXTBSY: f"{name} is a program that is running"}
    return reasons.get(code, f"{name}: {strerror}") if code is not None else f"{name}: {strerror}"


def _sentence(action: str | None, reason: str) -> str:
    return f"Cannot {action}: {reason}." if action else f"{reason[0].upper()}{reason[1:]}."


@contextlib.contextmanager
def os_errors(action: str | None = None, *, path: PathLike | None = None, user_path: bool = False) -> Iterator[None]:
    """Raise :func:`os_error`'s typed error for an environmental :class:`OSError` in the block.

    Other ``OSError``\\ s (bugs) propagate unchanged. Arguments as for :func:`os_error`; ``path``
    here only names what the error itself leaves unnamed (``write()`` on a full disk).
    """
    try:
        yield
    except OSError as exc:
        mapped = os_error(exc, action, path=path if error_path(exc) is None else None, user_path=user_path)
        if mapped is None:
            raise
        raise mapped from exc


@contextlib.contextmanager
def naming(path: PathLike) -> Iterator[None]:
    """Give an :class:`OSError` raised in the block without a file name (``write()`` and
    ``fsync()`` on a full disk have none) ``path`` as its ``filename``, for the message."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


def bind_error(exc: OSError, host: str, port: int) -> EdgemmError | None:
    """The typed error for a listening socket that cannot bind ``host:port`` (``None``: a bug).

    Covers EADDRINUSE (another process listens there), EADDRNOTAVAIL (not this machine's
    address), EACCES (a privileged port) and a host name that does not resolve.
    """
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    action = f"listen on {shown}"
    details = {"host": host, "port": port, "errno": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    if isinstance(exc, socket.gaierror):
        return AddressError(f"Cannot {action}: the host name does not resolve ({exc.strerror}).",
                            hint="Give --host an IP address such as 127.0.0.1.", details=details)
    if exc.errno == errno.EADDRINUSE:
        return AddressInUseError(
            f"Cannot {action}: the address is already in use (another server, perhaps another edgemm serve).",
            hint=f"Stop the other server (`ss -ltnp 'sport = :{port}'` shows it) or pick another --port "
                 "(0 picks a free one).", details=details)
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressError(f"Cannot {action}: {host} is not an address of this machine.",
                            hint="Use 127.0.0.1, or with --expose 0.0.0.0 or one of this machine's addresses "
                                 "(`ip -brief addr`).", details=details)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AddressError(f"Cannot {action}: permission denied (ports below 1024 need privileges).",
                            hint="Use a port of 1024 or above (the default is 8310), or grant the service "
                                 "CAP_NET_BIND_SERVICE.", details=details)
    return os_error(exc, action)


# --- inputs: stat first, then a bounded read ----------------------------------------------------


def stat_input(path: PathLike, what: str) -> os.stat_result:
    """``stat`` a file the user pointed at and refuse anything but a regular file.

    Nothing is opened: a FIFO is refused without blocking on it, a device without reading it.

    Args:
        path: The file.
        what: What it should hold, capitalised, for messages (``"Image file"``, ``"Archive"``).

    Returns:
        Its ``stat`` result (symbolic links followed).

    Raises:
        InputPathError: Missing, a directory, FIFO, device or socket, or a path through a file.
        PathPermissionError: Not accessible.
    """
    shown = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputPathError(f"{what} {shown!r} does not exist.", hint="Check the path.",
                             details={"path": shown, "errno": "ENOENT"}) from None
    except OSError as exc:
        raise (os_error(exc, f"read {what.lower()} {shown!r}", path=shown, user_path=True) or exc) from None
    if not stat.S_ISREG(st.st_mode):
        found = kind(st.st_mode)
        raise InputPathError(f"{what} {shown!r} is {found}, not a file.",
                             hint="Point at a regular file." if found != "a directory" else "Point at a file in it.",
                             details={"path": shown, "kind": found})
    return st


def open_input(path: PathLike, what: str) -> BinaryIO:
    """Open a file the user pointed at for reading, after :func:`stat_input` accepted it.

    The file is opened non-blocking and checked again through its descriptor, so a path swapped
    for a FIFO or a device between the two looks is refused too.

    Raises:
        InputPathError / PathPermissionError: As :func:`stat_input`, or the file changed kind.
    """
    shown = os.fspath(path)
    before = stat_input(path, what)
    with os_errors(f"read {what.lower()} {shown!r}", path=shown, user_path=True):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise InputPathError(f"{what} {shown!r} was replaced while it was opened.", hint="Try again.",
                                 details={"path": shown})
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: PathLike, max_bytes: int, what: str, *, hint: str | None = None) -> bytes:
    """Read a file the user pointed at, refusing one larger than ``max_bytes``.

    A file whose size is over the cap is refused by ``stat`` without reading a byte; otherwise
    at most ``max_bytes + 1`` bytes are read (the file may grow meanwhile) and one that grew past
    the cap is refused as well.

    Args:
        path: The file.
        max_bytes: The cap.
        what: What it should hold, capitalised (``"Image file"``).
        hint: What to do about a file over the cap (default: use a smaller one).

    Returns:
        Its bytes, at most ``max_bytes``.

    Raises:
        InputTooLargeError: Over the cap (``details``: ``bytes``, ``max_bytes``).
        InputPathError / PathPermissionError: As :func:`open_input`.
    """
    shown = os.fspath(path)
    size = stat_input(path, what).st_size
    if size <= max_bytes:
        with open_input(path, what) as fh, os_errors(f"read {what.lower()} {shown!r}", path=shown):
            # What stat promised plus one byte, which shows a file that grew; only then up to the
            # cap. One read of max_bytes + 1 would allocate the whole cap for every file (an mmap
            # and munmap per call: reading a 118-byte image took 34 against 17.5 us).
            data = fh.read(size + 1)
            if len(data) > size:
                data += fh.read(max_bytes + 1 - len(data))
        size = len(data)
        if size <= max_bytes:
            return data
    raise InputTooLargeError(
        f"{what} {shown!r} ({size:,} bytes{' or more' if size == max_bytes + 1 else ''}) is larger than "
        f"the limit of {max_bytes:,} bytes.",
        hint=hint or f"Use a smaller {what.lower()}.", details={"path": shown, "bytes": size, "max_bytes": max_bytes})


# --- outputs --------------------------------------------------------------------------------------


def check_output_file(path: PathLike, what: str) -> None:
    """Refuse an output file path that cannot become a file: an existing directory, FIFO, device
    or socket, or a path through a file. (A missing file or an existing regular one is fine.)

    Raises:
        InputPathError: The path, or the component named, is of the wrong kind.
    """
    _check_output(path, what, directory=False)


def check_output_dir(path: PathLike, what: str) -> None:
    """Refuse an output directory path that is an existing non-directory or lies under a file.

    Raises:
        InputPathError: The path, or the component named, is not a directory.
    """
    _check_output(path, what, directory=True)


def _check_output(path: PathLike, what: str, *, directory: bool) -> None:
    shown = os.fspath(path)
    _check_parents(Path(path), what)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise (os_error(exc, f"write {what.lower()} {shown}", path=shown, user_path=True) or exc) from None
    if (stat.S_ISDIR if directory else stat.S_ISREG)(st.st_mode):
        return
    found = kind(st.st_mode)
    if directory:
        wanted, hint = "a directory", "Name a directory."
    else:
        wanted = "a file"
        hint = "Name the file to write (e.g. inside that directory)." if found == "a directory" else \
            "Name a regular file to write."
    raise InputPathError(f"{what} {shown} is {found}, not {wanted}.", hint=hint, details={"path": shown, "kind": found})


def _check_parents(path: Path, what: str) -> None:
    blocker = _blocking_ancestor(path)
    if blocker is not None:
        raise InputPathError(f"Cannot create {what.lower()} {path}: {blocker}.", hint="Check the path.",
                             details={"path": str(path)})


def _blocking_ancestor(path: Path) -> str | None:
    """``"<ancestor> is a file, not a directory"`` when the nearest existing ancestor of ``path``
    is not a directory (else ``None``)."""
    for parent in path.parents:
        try:
            st = os.stat(parent)
        except OSError:
            continue
        return None if stat.S_ISDIR(st.st_mode) else f"{parent} is {kind(st.st_mode)}, not a directory"
    return None


def _existing_ancestor(path: Path) -> Path | None:
    """``path`` or its nearest ancestor that exists (what ``statvfs`` can ask about)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def require_free_space(path: PathLike, needed: int, what: str, *, headroom: int = 0,
                       headroom_reason: str = "") -> None:
    """Refuse a write of ``needed`` bytes (plus ``headroom``) where less is free.

    Args:
        path: Where the bytes will go (it may not exist yet: its nearest existing ancestor is asked).
        needed: Bytes the write itself takes.
        what: What is written, for the message (``"the bundle"``).
        headroom: Bytes that must stay free besides (so the device keeps working).
        headroom_reason: How the headroom is sized, e.g. ``"10 % + 64 MiB"``.

    Raises:
        DiskFullError: ``needed + headroom`` bytes are not free (the message gives all three).
    """
    where = _existing_ancestor(Path(path)) or Path(".")
    free = shutil.disk_usage(where).free
    if needed + headroom <= free:
        return
    wanted = human_bytes(needed)
    if headroom:
        why = f", {headroom_reason}" if headroom_reason else ""
        wanted += f" plus {human_bytes(headroom)} of headroom{why} ({human_bytes(needed + headroom)} in all)"
    raise DiskFullError(f"Not enough free space for {what}: it needs {wanted}; {human_bytes(free)} are free on {where}.",
                        hint=f"Free space there (`df -h {where}`) or choose a location on a larger disk.",
                        details={"path": str(where), "needed": needed, "headroom": headroom, "free": free})
