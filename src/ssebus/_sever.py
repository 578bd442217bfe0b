"""Severing a stalled client's TCP connection, which ASGI gives an app no way to do.

A client that stopped reading leaves unsent bytes in the server's transport, and a server
closes a transport only once it has flushed them: after the stream is evicted (or cut at
shutdown) its socket, its buffers and the server's graceful shutdown all wait for a client
that may never read again. The operating system can end that wait for any server: on
Linux the connection is found among this process's sockets by the request's own
addresses (the scope's ``client`` and ``server``), then ``SO_LINGER`` 0 and ``shutdown``
reset it. The server's transport sees its socket fail, closes it at once and drops what it
held; the client sees a reset and reconnects (resuming from its last id).

Only HTTP/1 (an HTTP/2 connection carries other streams too) and only an exact match of
both addresses among sockets this process holds: behind a proxy whose forwarded address
replaced ``client``, on a Unix socket or elsewhere than Linux nothing is found, nothing is
touched, and the server's own timeouts apply (see the README's deployment notes).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

import anyio

from ._seam import soon_from_anywhere
from ._types import Scope

__all__ = ["sever"]

logger = logging.getLogger("ssebus")

_PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"


Address = tuple[str, int]


async def sever(scope: Scope) -> bool:
    """Reset the TCP connection that carries ``scope``'s request; False if it cannot be
    found (or may carry other requests)."""
    if scope.get("http_version") not in ("1.0", "1.1"):
        return False
    client, server = scope.get("client"), scope.get("server")
    if not client or not server or server[1] is None:
        return False
    done = anyio.Event()
    result = [False]
    soon = soon_from_anywhere()

    def finish(severed: bool) -> None:
        result[0] = severed
        soon(done.set)

    if _BATCH.add((str(client[0]), int(client[1])), (str(server[0]), int(server[1])), finish):
        await anyio.to_thread.run_sync(_BATCH.run)
    await done.wait()
    return result[0]


class _Batch:
    """Connections waiting to be reset, done together: each pass reads ``/proc`` once,
    whose tables have a line per socket (thousands where streams are served), so twenty
    stalled clients cut at shutdown cost one pass, not twenty."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[Address, Address, Callable[[bool], None]]] = []
        self._running = False

    def add(self, client: Address, server: Address, finish: Callable[[bool], None]) -> bool:
        """Queue one; True if the caller must :meth:`run` the passes (none is running)."""
        with self._lock:
            self._pending.append((client, server, finish))
            start, self._running = not self._running, True
        return start

    def run(self) -> None:
        """Make passes (in a worker thread) until nothing is queued."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._running = False
                    return
            try:
                severed = _sever_all([(client, server) for client, server, _ in batch])
            except Exception as exc:  # never a request's problem: the server's timeouts apply
                logger.debug("could not reset %d connections: %r", len(batch), exc)
                severed = set()
            for client, server, finish in batch:
                finish((client, server) in severed)


_BATCH = _Batch()


def _sever_all(connections: list[tuple[Address, Address]]) -> set[tuple[Address, Address]]:
    inodes = _inodes_of(connections)
    fds = _fds_of(set(inodes))
    severed = set()
    for inode, connection in inodes.items():
        fd = fds.get(inode)
        if fd is not None and _reset(fd, inode):
            severed.add(connection)
    return severed


def _reset(fd: int, inode: int) -> bool:
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False  # closed meanwhile
    with socket.socket(fileno=duplicate) as sock:
        if os.fstat(duplicate).st_ino != inode:
            return False  # the number was reused meanwhile: not ours to touch
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False  # not connected any more: the server knows already
    return True


def _inodes_of(connections: list[tuple[Address, Address]]) -> dict[int, tuple[Address, Address]]:
    """The inodes of the connected TCP sockets from each ``server`` to its ``client``."""
    found: dict[int, tuple[Address, Address]] = {}
    # Each connection as each table writes it (tcp, tcp6): " local remote ".
    needles = [
        (
            connection,
            [
                f" {local} {remote} "
                for local, remote in zip(
                    _encodings(*connection[1]), _encodings(*connection[0]), strict=True
                )
            ],
        )
        for connection in connections
    ]
    for table_index, path in enumerate(_PROC_TCP):
        try:
            with open(path, encoding="ascii") as table:
                text = table.read()
        except OSError:
            continue
        for connection, written in needles:
            # A search of the whole table, not a split of every line.
            at = text.find(written[table_index])
            if at >= 0:
                fields = text[at : text.find("\n", at)].split()
                if fields[2] != _LISTEN:
                    found[int(fields[8])] = connection
    return found


def _encodings(host: str, port: int) -> tuple[str, str]:
    """``host:port`` as ``/proc/net/tcp`` and ``/proc/net/tcp6`` write it (each 32-bit
    word of the address in host byte order, then the port, in upper-case hex)."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    suffix = f":{port:04X}"
    if isinstance(address, ipaddress.IPv4Address):
        (word,) = struct.unpack("=I", address.packed)
        v4 = f"{word:08X}"
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
        return v4 + suffix, _words(mapped.packed) + suffix
    return "-", _words(address.packed) + suffix


def _words(packed: bytes) -> str:
    return "".join(f"{word:08X}" for word in struct.unpack("=4I", packed))


def _fds_of(inodes: set[int]) -> dict[int, int]:
    """This process's file descriptors of those socket ``inodes``."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc/self/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            found[int(target[8:-1])] = int(entry.name)
            if len(found) == len(inodes):
                break
    return found
