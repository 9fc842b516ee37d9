"""``kcnn serve``: TF Serving's REST API and a page for an exported model."""

from __future__ import annotations

import ipaddress
import json

import click

from keras_cnn.cli import options
from keras_cnn.cli.common import FiniteFloatRange, debug_option, json_option
from keras_cnn.config import MAX_BATCH_SIZE
from keras_cnn.export_layout import (read_export_labels, read_export_metadata, served_version_dirs,
                                     version_number)
from keras_cnn.progress import say, warn
from keras_cnn.library_chatter import import_tensorflow_quietly
from keras_cnn.serve import require_serve_extra

DEFAULT_PORT = 8501   # TF Serving's REST port
# The largest values the limits take (a few digits typed too many are refused, not served with).
MAX_IN_FLIGHT = 65_536
MAX_BATCH_TIMEOUT_MS = 60_000        # a minute: a batch that waits longer batches nothing
MAX_REQUEST_TIMEOUT = 86_400         # a day
MAX_BODY_MB = 2**20                  # a tebibyte


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Export directory (what kcnn export --out wrote): every numbered version folder is served, the "
                   "highest by default. A single version folder DIR/<version> serves that version only.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. 127.0.0.1 answers this machine only; 0.0.0.0 (or ::) answers anyone "
                   "who can reach it over the network, with no authentication: put it behind a proxy you control.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on (TF Serving's REST port by default; 0 picks a free one).")
@click.option("--name", default=None,
              help="Model name in the URLs (/v1/models/NAME) [default: the export directory's name].")
@click.option("--max-batch", type=click.IntRange(1, MAX_BATCH_SIZE), default=32, show_default=True,
              help="Batch up to this many images of concurrent requests into one model call; 1 turns batching off.")
@click.option("--batch-timeout-ms", type=FiniteFloatRange(0, MAX_BATCH_TIMEOUT_MS), default=2.0, show_default=True,
              help="How long a batch that is not full waits for more requests (milliseconds).")
@click.option("--max-in-flight", type=click.IntRange(1, MAX_IN_FLIGHT), default=64, show_default=True,
              help="Requests that run the model at once; more are answered 503 with Retry-After.")
@click.option("--request-timeout", type=FiniteFloatRange(0, MAX_REQUEST_TIMEOUT, min_open=True), default=30.0,
              show_default=True,
              help="Seconds a request may take (reading its body, waiting and running the model); 504 beyond.")
@click.option("--max-body-mb", type=FiniteFloatRange(0, MAX_BODY_MB, min_open=True), default=32.0, show_default=True,
              help="Largest request body in megabytes (2^20 bytes); 413 beyond.")
@options.max_image_pixels(note="Larger images are answered 400.")
@json_option
@debug_option
def serve(model_dir: str, host: str, port: int, name: str | None, max_batch: int, batch_timeout_ms: float,
          max_in_flight: int, request_timeout: float, max_body_mb: float, max_image_pixels: int,
          as_json: bool) -> None:
    """Serve an exported model over HTTP: TF Serving's REST API and a page to try it.

    \b
    Routes (NAME: --name, N: a version number):
      GET  /                                          the page: drop images, see labels and probabilities
      GET  /v1/models/NAME[/versions/N]               status, as TF Serving answers it
      GET  /v1/models/NAME[/versions/N]/metadata      signatures with their inputs and outputs
      POST /v1/models/NAME[/versions/N]:predict       {"instances": [{"b64": "..."}]} or {"inputs": ...},
                                                      optional "signature_name" (serving_default,
                                                      serving_images, serving_images_uint8, serving_tta)
      POST /kcnn/v1/models/NAME[/versions/N]/classify multipart "image" files -> labels and probabilities
    Errors are {"error": "..."} with status 400, 404, 413, 503 or 504.  A client written for
    TF Serving's REST API works unchanged against TF Serving's own container or this server.

    \b
    Stops on Ctrl-C or SIGTERM after answering the requests in flight (exit 0).
    With --json, one JSON object {"url", "name", "versions"} is printed on stdout once it listens
    (with --port 0, the url names the port it picked).

    Example: kcnn serve --model export/ --port 8501
    """
    require_serve_extra()
    folders = served_version_dirs(model_dir)
    for folder in folders:
        read_export_labels(folder, read_export_metadata(folder))   # a damaged export: one line, before TensorFlow
    from keras_cnn.serve.server import bind_socket, url_of

    server_socket = bind_socket(host, port)
    if not _is_loopback(host):
        warn(f"listening on {host}: anyone who can reach this machine can use the model (no authentication)")
    import_tensorflow_quietly()
    from keras_cnn.serve.app import ServeOptions, create_app
    from keras_cnn.serve.models import load_repository
    from keras_cnn.serve.server import serve as run_server

    numbers = [version_number(folder) for folder in folders]
    say(f"kcnn: loading {len(numbers)} version(s) of {model_dir}: {', '.join(map(str, numbers))}")
    repository = load_repository(model_dir, name)
    options = ServeOptions(max_batch=max_batch, batch_timeout_ms=batch_timeout_ms,
                           max_body_bytes=int(max_body_mb * 2 ** 20), max_in_flight=max_in_flight,
                           request_timeout=request_timeout, max_image_pixels=max_image_pixels or None)
    url = url_of(server_socket)

    def started() -> None:
        say(f"kcnn: serving {repository.name} (version {repository.latest.number}) at {url} — the page; "
            f"TF Serving REST API at {url}v1/models/{repository.name}; Ctrl-C or SIGTERM stops it")
        if as_json:
            click.echo(json.dumps({"url": url, "name": repository.name, "versions": sorted(repository.versions)}))

    run_server(create_app(repository, options), server_socket, started)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
