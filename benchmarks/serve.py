"""``kcnn serve`` under load: 16 concurrent clients over loopback, with and without batching.

Starts ``kcnn serve`` (a real process, as users run it) on a small exported CNN, then sends
``--requests`` TF Serving ``:predict`` requests of one JPEG each (``{"instances":
[{"b64": …}]}``) from ``--clients`` concurrent clients (one asyncio process, keep-alive
connections), once with server-side batching (``--max-batch``) and once without
(``--max-batch 1``).  Reports errors (want 0), requests per second and the p50/p99
latency, against ``kcnn predict``'s images per second on the same files (measured in the
same run, batch of 32), and appends a section to ``benchmarks/RESULTS.md``.

    python benchmarks/serve.py                          # 2,000 requests, 16 clients
    python benchmarks/serve.py --requests 200 --no-record
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import add_recording_arguments, command_line, describe_machine, load_average, machine_description, publish
from predict import build_small_export, images_per_second, write_images

SECTION_TITLE = "kcnn serve under load (TF Serving REST :predict over loopback)"
MODEL_NAME = "bench"


def start_server(export_dir: Path, max_batch: int, batch_timeout_ms: float) -> tuple[subprocess.Popen, str]:
    """``kcnn serve`` on a free port; returns the process and its URL once it answers status calls."""
    import httpx

    command = [sys.executable, "-m", "keras_cnn", "-q", "serve", "--model", str(export_dir), "--name", MODEL_NAME,
               "--port", "0", "--json", "--max-batch", str(max_batch), "--batch-timeout-ms", str(batch_timeout_ms),
               "--max-in-flight", "256"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    url = json.loads(process.stdout.readline())["url"]
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}v1/models/{MODEL_NAME}", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("kcnn serve did not start within 120 s")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a keep-alive connection; returns (status, body)."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def load(url: str, bodies: list[bytes], requests: int, clients: int) -> dict:
    """``requests`` POSTs from ``clients`` concurrent keep-alive connections; latencies in seconds.

    The client is plain asyncio streams: httpx's async client spent about 3.5 ms of CPU per
    request here, more than the server, and on 2 cores the client's CPU is the server's loss.
    """
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    path = f"/v1/models/{MODEL_NAME}:predict"
    requests_bytes = [(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies]
    latencies: list[float] = []
    errors: list[str] = []
    next_request = 0

    async def client() -> None:
        nonlocal next_request
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            while next_request < requests:
                index = next_request
                next_request += 1
                start = time.perf_counter()
                try:
                    status, body = await post(reader, writer, requests_bytes[index % len(requests_bytes)])
                    if status != 200 or len(json.loads(body)["predictions"]) != 1:
                        errors.append(f"{status}: {body[:100]!r}")
                except (OSError, asyncio.IncompleteReadError, ValueError, KeyError) as error:
                    errors.append(type(error).__name__)
                    writer.close()
                    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "seconds": seconds,
            "per_second": len(latencies) / seconds, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def measure(arguments) -> dict:
    from keras_cnn.predict import load_exported_model

    with tempfile.TemporaryDirectory(prefix="kcnn-bench-serve-") as scratch:
        scratch = Path(scratch)
        export_dir = Path(arguments.model) if arguments.model else build_small_export(scratch, arguments.model_size)
        paths = write_images(scratch / "images", arguments.images, arguments.image_height, arguments.image_width)
        reference = images_per_second(load_exported_model(export_dir), paths, 32, arguments.repeats)
        bodies = [json.dumps({"instances": [{"b64": base64.b64encode(path.read_bytes()).decode("ascii")}]}).encode()
                  for path in paths]
        results = {}
        for mode, max_batch in (("batching", arguments.max_batch), ("no batching", 1)):
            process, url = start_server(export_dir, max_batch, arguments.batch_timeout_ms)
            try:
                asyncio.run(load(url, bodies, min(64, arguments.requests), arguments.clients))   # warm-up
                results[mode] = asyncio.run(load(url, bodies, arguments.requests, arguments.clients))
            finally:
                results.setdefault(mode, {})["exit_code"] = stop_server(process)
    return {"reference": reference, "results": results}


def section_lines(measured: dict, arguments, machine: dict[str, str], load_after: str,
                  argv: list[str] | None) -> list[str]:
    reference = measured["reference"]
    lines = [
        describe_machine(machine, load_after),
        "",
        (f"Model: a two-block CNN, input {arguments.model_size}x{arguments.model_size}, 10 classes"
         if not arguments.model else f"Model: {arguments.model}")
        + f"; {arguments.images} JPEG files of {arguments.image_width}x{arguments.image_height}, one per request "
          f"(`{{\"instances\": [{{\"b64\": …}}]}}`), {arguments.requests:,} requests from {arguments.clients} "
          "concurrent keep-alive connections (one asyncio process) to a `kcnn serve` process over loopback.",
        "",
        "| server | errors | requests/s | p50 latency | p99 latency | vs kcnn predict |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, result in measured["results"].items():
        setting = (f"--max-batch {arguments.max_batch} --batch-timeout-ms {arguments.batch_timeout_ms:g}"
                   if mode == "batching" else "--max-batch 1")
        lines.append(f"| {mode} (`{setting}`) | {result['errors']} | {result['per_second']:,.0f} | "
                     f"{1000 * result['p50']:.1f} ms | {1000 * result['p99']:.1f} ms | "
                     f"{result['per_second'] / reference:.2f}x |")
    lines += [f"| `kcnn predict` on the same files, batch of 32 (reference) | | {reference:,.0f} images/s | | | 1x |",
              "",
              "Server exit codes after SIGTERM: "
              + ", ".join(f"{mode} {result['exit_code']}" for mode, result in measured["results"].items()) + ".",
              f"Command: `{command_line(__file__, argv)}`"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Export directory to serve (default: build a small CNN export).")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images", type=int, default=200, help="Distinct JPEG files the requests cycle through.")
    parser.add_argument("--image-height", type=int, default=240)
    parser.add_argument("--image-width", type=int, default=320)
    parser.add_argument("--model-size", type=int, default=96, help="Input size of the built model.")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="Passes of the kcnn predict reference (best kept).")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)

    machine = machine_description()
    measured = measure(arguments)
    for mode, result in measured["results"].items():
        if result["errors"]:
            print(f"{mode}: {result['errors']} errors, e.g. {result['first_errors']}", file=sys.stderr)
    publish(SECTION_TITLE, section_lines(measured, arguments, machine, load_average(), argv), arguments)
    return 1 if any(result["errors"] for result in measured["results"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
