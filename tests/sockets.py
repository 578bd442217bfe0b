"""Raw-socket clients of a server subprocess, for the lifecycle tests. Not a test module.

:func:`open_stream` sends a GET and reads the response head; a ``stalled`` client never
reads again (with a small receive buffer, so the server's buffers fill soon). A
:class:`Crowd` reads many healthy streams at once from one thread, keeping only the tail
of each. :func:`serving_pid`, :func:`rss_mib` and :func:`sockets_of` look at the server
process from outside, through ``/proc``.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Iterable

#: Bytes of each healthy stream a Crowd keeps: enough for the last frames and the end.
TAIL = 2048
#: The receive buffer of a stalled client: small, so the server's side fills soon.
STALLED_RCVBUF = 4096


def open_stream(port: int, path: str, *, stalled: bool = False) -> socket.socket:
    """A client that has sent its GET (and, unless ``stalled``, read a 200 head)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if stalled:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n".encode()
    )
    if stalled:
        return sock
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the server closed the stream before its headers"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_the_end(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server ends the chunked body (or closes, or ``timeout``)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if data.endswith(b"0\r\n\r\n"):
            break
    sock.close()
    return data


class Crowd:
    """Healthy streams read by one thread until each ends; ``tails[i]`` is the end of
    stream ``i``, ``received[i]`` how many bytes it got, ``ended[i]`` whether it ended."""

    def __init__(self, sockets: Iterable[socket.socket]) -> None:
        self.sockets = list(sockets)
        self.tails = [b""] * len(self.sockets)
        self.received = [0] * len(self.sockets)
        self.ended = [False] * len(self.sockets)
        self._selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.sockets):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, index)
        self._open = len(self.sockets)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._open and not self._stop:
            for key, _ in self._selector.select(timeout=0.1):
                index = key.data
                try:
                    chunk = self.sockets[index].recv(1 << 18)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    self.received[index] += len(chunk)
                    self.tails[index] = (self.tails[index] + chunk)[-TAIL:]
                if not chunk or self.tails[index].endswith(b"0\r\n\r\n"):
                    self.ended[index] = True
                    self._selector.unregister(self.sockets[index])
                    self._open -= 1

    def wait_ended(self, timeout: float) -> None:
        """Wait (bounded) until every stream has ended."""
        self._thread.join(timeout)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._selector.close()
        for sock in self.sockets:
            sock.close()


def publish(port: int, data: str, *, tenant: str | None = None, event: str = "note") -> None:
    """``POST /publish`` to a control-routes app (see ``tests/apps.py``)."""
    body = {"data": data, "event": event, **({"tenant": tenant} if tenant else {})}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/publish",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def create_order(port: int, customer: str, tenant: str = "acme") -> None:
    """``POST /orders`` to the demo (``examples/orders_app.py``)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/orders",
        data=json.dumps({"customer": customer, "tenant": tenant}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def serving_pid(pid: int) -> int:
    """The process that serves requests: ``pid`` itself, or its one worker (gunicorn's)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            workers = children.read().split()
    except OSError:
        return pid
    return int(workers[0]) if len(workers) == 1 else pid


def rss_mib(pid: int) -> float:
    """The resident memory of ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def sockets_of(pid: int) -> int:
    """How many sockets ``pid`` holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count
