"""A node's identity across restarts, for ``spiralfast mesh start``.

Without ``--node-id`` (or ``node_id`` in the file or environment), a node takes the id kept
in its data directory for the port it listens on (``<data dir>/node_id.<port>``; a node on
no fixed port — no WebSocket, or port 0 — uses ``<data dir>/node_id``), made on its first
start, so a restart is the same node with the same event log, and two nodes of one machine
on different ports (the README's two-node example) are two nodes without further flags.  While a node runs it holds an exclusive lock on
``<data dir>/<node id>.lock`` (``flock``, released by the kernel when the process ends,
however it ends): a second process with that id and data directory is refused at once,
naming the first one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

#: The id file inside the data directory (``node_id.<port>`` for a node on a fixed port).
ID_FILE = "node_id"


def id_file_name(slot: str | None) -> str:
    """The id file's name for a node listening on port ``slot`` (None: no fixed port)."""
    return f"{ID_FILE}.{slot}" if slot else ID_FILE
#: Longest node id (as MeshConfig allows).
MAX_ID_BYTES = 200


class IdentityError(Exception):
    """One line for the user (``mesh start`` exits 1 with it)."""


@dataclass
class Identity:
    """The id a node starts with, and where it came from."""

    node_id: str
    #: ``"setting"`` (--node-id, file or environment), ``"file"`` (read from the id
    #: file), ``"new"`` (the id file was made now) or ``"fresh"`` (no id file could be
    #: made: a new id each start).
    origin: str
    #: The id file (``origin`` file or new).
    path: Path | None = None
    #: Something the operator should know (a warning), e.g. why the id is not kept.
    note: str | None = None


def safe_name(node_id: str) -> str:
    """``node_id`` as a file name (what ``persistence.default_db_path`` does)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node_id) or "node"


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def read_id_file(path: Path) -> str:
    """The id kept in ``path`` (raises ``FileNotFoundError`` when there is none, and
    :class:`IdentityError` when it cannot be read or holds no valid id)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except NotADirectoryError:  # the data directory cannot exist (a file on its path)
        raise FileNotFoundError(errno.ENOENT, "no id file", str(path)) from None
    except OSError as exc:
        raise IdentityError(f"cannot read node id file {path}: {_why(exc)} "
                            "(fix its permissions, or give --node-id or another --data-dir)") from None
    fix = f"remove it to make a new id, or give --node-id (node id file {path})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError(f"node id file {path} is corrupt (not UTF-8 text): {fix}") from None
    node_id = text.strip()
    if not node_id:
        raise IdentityError(f"node id file {path} is corrupt (empty): {fix}")
    if len(node_id.encode()) > MAX_ID_BYTES or any(ch.isspace() or not ch.isprintable() for ch in node_id):
        raise IdentityError(f"node id file {path} is corrupt (not one id of at most {MAX_ID_BYTES} bytes "
                            f"without spaces): {fix}")
    return node_id


def _create_id_file(path: Path) -> str:
    """Write a new uuid4 to ``path`` atomically (a temporary file hard-linked into
    place): two nodes starting at once agree on the one that got there first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    new_id = str(uuid.uuid4())
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_id + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_id_file(path)  # another node made it first: the same node id for both
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # the new name survives a crash
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return new_id


def establish(node_id: str | None, data_dir: Path, slot: str | None = None) -> Identity:
    """The node's id: ``node_id`` when the settings give one, else the one kept in
    ``data_dir`` for ``slot`` (the port the node listens on; made now on a first start).  A data directory where no id file can
    be made gives a fresh id with a note; an unreadable or corrupt id file is an
    :class:`IdentityError`."""
    if node_id is not None:
        return Identity(node_id, "setting")
    path = data_dir / id_file_name(slot)
    try:
        return Identity(read_id_file(path), "file", path)
    except FileNotFoundError:
        pass
    try:
        return Identity(_create_id_file(path), "new", path)
    except IdentityError:
        raise
    except OSError as exc:
        return Identity(str(uuid.uuid4()), "fresh", None,
                        f"cannot keep this node's id in {data_dir} ({_why(exc)}): it gets a new id at each "
                        "start (give --node-id, or a writable --data-dir)")


class NodeLock:
    """An exclusive ``flock`` on ``<data dir>/<node id>.lock`` while the node runs.

    The file says who holds it (``pid`` and, once the node listens, its endpoint), for
    the error a second process gets.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, data_dir: Path, node_id: str, id_file: Path | None = None) -> NodeLock | None:
        """Take the lock, or raise :class:`IdentityError` naming the live holder.

        Returns None when no lock file can be made there (a read-only data directory);
        then the id file itself is locked when there is one.
        """
        path = data_dir / f"{safe_name(node_id)}.lock"
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            if id_file is None:
                return None
            try:
                fd = os.open(id_file, os.O_RDONLY)
            except OSError:
                return None
            path = id_file
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise IdentityError(f"node id {node_id} is already held by a live node ({holder}) using "
                                    f"data directory {data_dir}; give this node its own --data-dir "
                                    "or --node-id") from None
            return None  # a file system without locks: run unlocked
        lock = cls(path, fd)
        lock.describe(None)
        return lock

    def describe(self, endpoint: str | None) -> None:
        """Write who holds the lock (this process, and where it listens)."""
        if not self.path.name.endswith(".lock"):
            return  # the id file itself: never rewritten
        text = f"pid {os.getpid()}" + (f" at {endpoint}" if endpoint else "") + "\n"
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def _holder(fd: int) -> str:
    """What the lock file says about its holder: ``pid 123 at ws://...``."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    if not text.startswith("pid "):
        return "another process"
    return " ".join(text.split())
