"""Running the application under uvicorn: bind, serve, and drain on SIGTERM.

The socket is bound before the model loads, so a port in use is one line at once (not
after seconds of loading), and ``--port 0`` picks a free port that the start line names.
On SIGTERM or Ctrl-C the server stops accepting connections, lets the requests in flight
finish (the batcher answers every queued request), then returns, so ``kcnn serve`` exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from typing import Callable

import uvicorn

from keras_cnn.errors import RunFailure, UserError
from keras_cnn.progress import say
from keras_cnn.serve.logs import route_server_logs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); ``UserError`` when that is impossible."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UserError(f"--host {host}: {error.strerror or error}") from None
    family, kind, protocol, _, address = infos[0]
    server_socket = socket.socket(family, kind, protocol)
    server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server_socket.bind(address)
    except OSError as error:
        server_socket.close()
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}"
                        + (" (another server is using it: choose another --port)" if port else "")) from None
    server_socket.set_inheritable(True)
    return server_socket


def url_of(server_socket: socket.socket) -> str:
    """``http://HOST:PORT/`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = server_socket.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class DrainingServer(uvicorn.Server):
    """Uvicorn's server that calls ``on_started`` once it listens, prints kcnn's stop lines, and
    returns (exit 0) after a signal.

    Uvicorn re-raises a caught SIGTERM once it has shut down, so the process would die of the
    signal; a server that drained every request has done its job, so kcnn returns instead.
    """

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None], in_flight: Callable[[], int]):
        super().__init__(config)
        self.on_started = on_started
        self.in_flight = in_flight

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self.handle_exit) for number in STOP_SIGNALS}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.on_started()

    async def shutdown(self, sockets=None) -> None:
        busy = self.in_flight()
        say(f"kcnn: stopping: finishing {busy} request(s) in flight" if busy else "kcnn: stopping")
        await super().shutdown(sockets=sockets)
        say("kcnn: stopped")


def serve(app, server_socket: socket.socket, on_started: Callable[[], None],
          drain_seconds: float | None = None) -> None:
    """Serve ``app`` on ``server_socket`` until SIGTERM / Ctrl-C; returns when every request is answered.

    ``on_started`` is called once the socket listens (``kcnn serve`` prints where).
    """
    route_server_logs()
    config = uvicorn.Config(app, log_config=None, access_log=True, lifespan="on",
                            timeout_graceful_shutdown=drain_seconds)
    server = DrainingServer(config, on_started, lambda: app.service.work.in_flight)
    asyncio.run(server.serve(sockets=[server_socket]))
    if not server.started:
        raise RunFailure("the server could not start (see the lines above)")
