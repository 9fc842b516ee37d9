"""What keeps the server up under bad input and load: body size, requests in flight, deadlines.

- :class:`BodySizeLimit` (ASGI middleware): a body over the limit gets 413 — at once when
  ``Content-Length`` says so, else as soon as the bytes read pass it (nothing more is read).
- :class:`ModelWork` (around the endpoints that run the model): at most ``max_in_flight``
  such requests at a time (503 with ``Retry-After`` beyond, so a client backs off instead
  of piling up); each must finish within ``timeout`` seconds (504, TF Serving's status for
  an exceeded deadline).  Status, metadata and the page are never limited, so they answer
  while the model is busy.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from keras_cnn.serve.errors import ServingError

RETRY_AFTER_SECONDS = 1


class BodySizeLimit:
    """ASGI middleware: 413 ``{"error": …}`` for request bodies over ``max_bytes``."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_json_error(send, too_large(self.max_bytes))
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def too_large(max_bytes: int) -> ServingError:
    return ServingError(413, f"the request body is over the limit of {max_bytes:,} bytes (kcnn serve --max-body-mb)")


async def send_json_error(send, error: ServingError) -> None:
    """Answer an ASGI request with ``{"error": …}`` and the error's status, outside any framework."""
    body = json.dumps({"error": error.message}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(key.lower().encode(), value.encode()) for key, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class ModelWork:
    """Counts the requests that run the model and holds them to the limits (use ``async with``)."""

    max_in_flight: int
    timeout: float
    in_flight: int = 0

    def __call__(self) -> "_Slot":
        if self.in_flight >= self.max_in_flight:
            raise ServingError(503, f"the server is busy: {self.in_flight} requests in flight (kcnn serve "
                                    f"--max-in-flight); retry after {RETRY_AFTER_SECONDS} s",
                               {"Retry-After": str(RETRY_AFTER_SECONDS)})
        return _Slot(self)


class _Slot:
    def __init__(self, work: ModelWork):
        self.work = work
        self.deadline = None

    async def __aenter__(self):
        self.work.in_flight += 1
        self.deadline = asyncio.timeout(self.work.timeout)
        await self.deadline.__aenter__()
        return self

    async def __aexit__(self, kind, error, traceback):
        self.work.in_flight -= 1
        try:
            await self.deadline.__aexit__(kind, error, traceback)
        except TimeoutError:
            raise ServingError(504, f"the request took longer than {self.work.timeout:g} s (kcnn serve "
                                    "--request-timeout)") from None
        return False
