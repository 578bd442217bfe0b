"""Several processes serving one address, each with its own in-memory bus: say so, once.

The worker processes of one server (``uvicorn --workers``, ``gunicorn -w``, ``hypercorn
--workers``) listen on one address, through an inherited socket or ``SO_REUSEPORT``. A
process whose endpoint has an in-memory bus registers under a directory named for each
address it listens on, ``$TMPDIR/ssebus-<uid>/net-<namespace>/<host>-<port>/<pid>.<random>``,
and holds an exclusive ``flock`` on that entry while it serves: a locked entry of a living
pid is a live process, anything else the remains of a dead one, removed by whoever finds
it. Another live process there means an event published in one reaches only the clients
of that one, and this process warns. Linux only (the sockets are found through
``/proc/self/fd``); elsewhere, and on any failure, the check does nothing.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import secrets
import socket
import stat
import sys
import tempfile
import threading
from contextlib import suppress
from pathlib import Path

if sys.platform == "linux":
    import fcntl

__all__ = ["WorkerCheck", "listening_addresses"]

logger = logging.getLogger("ssebus")


#: ``tcp_info.tcpi_state`` of a TCP socket neither listening nor connected (nor connecting).
_TCP_CLOSE = 7


def listening_addresses() -> list[str]:
    """What this process's server sockets listen on, or are bound to listen on:
    ``127.0.0.1:8000``, ``[::]:8000``, ``unix:/path``.

    Bound ones count because uvicorn's parent only binds: each worker calls ``listen()``
    itself, after its lifespan startup, so the first worker would otherwise find nothing.
    """
    found: list[str] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            copy = os.dup(fd)  # the server's own descriptor is never touched, let alone closed
            try:
                sock = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)
                raise
            with sock:
                if _server_socket(sock):
                    address = _address(sock)
                    if address is not None and address not in found:
                        found.append(address)
        except (OSError, ValueError):
            continue  # closed meanwhile, or not a socket we can read
    return found


def _server_socket(sock: socket.socket) -> bool:
    """Listening, or a TCP socket bound to a port and neither connected nor connecting."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        return True
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state == _TCP_CLOSE and sock.getsockname()[1] != 0


def _address(sock: socket.socket) -> str | None:
    """``sock``'s local address as the warning names it; None for an unnamed socket."""
    if sock.family == socket.AF_INET:
        host, port = sock.getsockname()[:2]
        return f"{host}:{port}"
    if sock.family == socket.AF_INET6:
        host, port = sock.getsockname()[:2]
        return f"[{host}]:{port}"
    if sock.family == socket.AF_UNIX:
        path = sock.getsockname()
        if isinstance(path, bytes):  # an abstract name
            path = "@" + path[1:].decode("utf-8", errors="backslashreplace")
        return f"unix:{path}" if path else None
    return None


def _directory_name(address: str) -> str:
    """A file name for ``address``: ``127.0.0.1-8000``, ``::-8000``, ``unix-<hash>``."""
    if address.startswith("unix:"):
        return "unix-" + hashlib.sha256(address.encode()).hexdigest()[:32]
    host, _, port = address.rpartition(":")
    return f"{host.strip('[]')}-{port}"


def _network_namespace() -> str:
    """Two containers may both serve 127.0.0.1:8000 over one shared temporary directory."""
    try:
        return "net-" + os.readlink("/proc/self/ns/net").strip("net:[]")
    except OSError:
        return "net"


def _alive(pid: str) -> bool:
    """Whether ``pid`` is a running process (another user's counts: it exists)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return pid.isdigit()
    return True


class WorkerCheck:
    """Registers this process under each address it listens on, and warns once if another
    live process with an in-memory ``bus`` serves one of them."""

    def __init__(self, root: Path | None = None, *, bus: str = "InMemoryEventBus") -> None:
        self.root = root
        self.bus = bus
        self._entries: list[tuple[Path, int]] = []  # each entry and its locked descriptor
        self._warned = False
        self._lock = threading.Lock()

    def check(self) -> bool:
        """Register and warn if need be; False while this process listens on nothing yet
        (a server may bind after its lifespan startup: check again later), else True."""
        if sys.platform != "linux":
            return True
        with self._lock:
            if self._entries:
                return True
            try:
                addresses = listening_addresses()
                if not addresses:
                    return False
                # A mounted endpoint gets no lifespan shutdown: remove them at exit anyway.
                atexit.register(self.close)
                self._register(addresses)
            except Exception as exc:  # a diagnostic must never break a request
                logger.debug("could not look for other worker processes: %r", exc)
                self._release()
            return True

    def close(self) -> None:
        """Remove this process's registrations (the server stops serving)."""
        with self._lock:
            self._release()

    def _register(self, addresses: list[str]) -> None:
        base = self._base() / _network_namespace()
        base.mkdir(mode=0o700, exist_ok=True)
        pid = os.getpid()
        others: dict[str, set[str]] = {}
        for address in addresses:
            directory = base / _directory_name(address)
            self._entries.append(_enter(directory, pid))
            others[address] = _live_others(directory, pid)
            logger.info("pid %d serves %s with its own %s", pid, address, self.bus)
        for address, pids in others.items():
            if pids and not self._warned:
                self._warned = True
                logger.warning(
                    "%d processes serve %s, each with its own %s: an event published in one "
                    "reaches only that process's clients. Use RedisEventBus "
                    "(README: 'Several workers')",
                    len(pids) + 1,
                    address,
                    self.bus,
                )

    def _base(self) -> Path:
        """The directory of every registration: this user's own, or none at all."""
        base = self.root or Path(tempfile.gettempdir()) / f"ssebus-{os.getuid()}"
        with suppress(FileExistsError):
            os.mkdir(base, 0o700)
        info = os.lstat(base)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise NotADirectoryError(f"{base} is not a directory of this user's alone")
        return base

    def _release(self) -> None:
        atexit.unregister(self.close)
        for path, fd in self._entries:
            with suppress(OSError):
                os.unlink(path)  # first: a live process's entry is never seen unlocked
            with suppress(OSError):
                os.close(fd)
            with suppress(OSError):
                os.rmdir(path.parent)  # unless another process's entry is still there
        self._entries.clear()


def _enter(directory: Path, pid: int) -> tuple[Path, int]:
    """Create this process's entry in ``directory``, locked before anyone can see it."""
    name = f"{pid}.{secrets.token_hex(4)}"
    hidden, entry = directory / f".{name}", directory / name
    for attempt in range(3):
        directory.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            break
        except FileNotFoundError:  # the last process there removed the directory meanwhile
            if attempt == 2:
                raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(hidden, entry)
    except OSError:
        os.close(fd)
        with suppress(OSError):
            os.unlink(hidden)
        raise
    return entry, fd


def _live_others(directory: Path, pid: int) -> set[str]:
    """The pids, other than ``pid``, of live entries in ``directory``; removes dead ones."""
    others: set[str] = set()
    for entry in os.scandir(directory):
        if entry.name.startswith("."):
            continue  # being created
        owner = entry.name.partition(".")[0]
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # removed meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if owner != str(pid) and _alive(owner):
                    others.add(owner)
                continue
            with suppress(FileNotFoundError):
                os.unlink(entry.path)  # its process died without removing it
        finally:
            os.close(fd)
    return others
