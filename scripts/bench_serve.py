#!/usr/bin/env python3
"""Throughput and latency of `kcap serve` under concurrent clients, batching on and off.

    scripts/bench_serve.py --run-dir RUN [--images FOLDER] [--clients 1 4 16] [--requests 96] [--seconds 60]
    scripts/bench_serve.py --export DIR --images FOLDER [--markdown]

It exports the run once (`kcap export`, beam size `--beam-size`), then for each
of batching on (`--max-batch-size`, `--max-wait-ms`) and off (`--no-batching`)
starts `kcap serve --export` on 127.0.0.1 (a free port; nothing else is
loaded), and at each client count runs closed-loop clients: each sends one
image to `POST /v1/models/kcap:predict` (TensorFlow Serving's format), waits
for the answer, and sends the next. A level stops after `--requests` requests
or `--seconds` seconds, whichever comes first. Reported per level: captions
per second (successful answers over the level's wall time), p50/p99 latency,
errors (any answer but 200, or none), and the server's model calls and mean
batch from `GET /v1/models/kcap`. The clients run in this process, on the
same machine as the server: on few cores they take CPU from it.

Prints one JSON object (or, with `--markdown`, a table).

Example:

    scripts/bench_serve.py --run-dir runs/quickstart --clients 1 4 16 --requests 96 --markdown
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kcap(*args: str) -> list[str]:
    return [sys.executable, "-m", "kcap", *args]


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Server:
    """`kcap serve --export DIR` on a free port of 127.0.0.1, for the length of a `with`."""

    def __init__(self, export_dir: Path, flags: list[str], log: Path):
        self.port = free_port()
        self.command = kcap("serve", "--export", str(export_dir), "--host", "127.0.0.1", "--port", str(self.port), *flags)
        self.log = log

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench_serve: kcap serve exited with {self.process.returncode}; see {self.log}.")
            try:
                if request(self.port, "GET", "/healthz", timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.process.kill()
        raise SystemExit(f"bench_serve: kcap serve did not answer within 180 s; see {self.log}.")

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def metadata(self) -> dict:
        return json.loads(request(self.port, "GET", "/v1/models/kcap")[1])["metadata"]


def run_level(port: int, bodies: list[bytes], clients: int, max_requests: int, max_seconds: float) -> dict:
    """`clients` closed-loop clients until `max_requests` are sent or `max_seconds` pass."""
    lock = threading.Lock()
    sent = [0]
    latencies, errors = [], []
    stop_at = time.monotonic() + max_seconds

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if sent[0] >= max_requests or time.monotonic() >= stop_at:
                    break
                index = sent[0]
                sent[0] += 1
            start = time.monotonic()
            try:
                connection.request("POST", "/v1/models/kcap:predict", bodies[index % len(bodies)],
                                   {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                status = response.status
            except OSError as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ok, status = False, type(error).__name__
            with lock:
                (latencies if ok else errors).append(time.monotonic() - start if ok else status)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    ms = sorted(s * 1000 for s in latencies)
    return {
        "clients": clients,
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_kinds": sorted({str(e) for e in errors}),
        "seconds": round(wall, 2),
        "captions_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="a trained run (exported once, into a temporary folder)")
    source.add_argument("--export", help="a kcap export")
    parser.add_argument("--images", help="a folder of JPEG/PNG images (default: the run's test split)")
    parser.add_argument("--beam-size", type=int, default=1, help="with --run-dir: the export's beam size (default 1)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=96, help="most requests per level (default 96)")
    parser.add_argument("--seconds", type=float, default=60, help="most seconds per level (default 60)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--warmup", type=int, default=4, help="requests before each server's first level")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = parser.parse_args(argv)
    if max(args.clients) > 64 or args.requests > 10_000 or args.seconds > 600:
        parser.error("at most 64 clients, 10,000 requests and 600 seconds per level: this is a local benchmark.")

    with tempfile.TemporaryDirectory(prefix="kcap-bench-serve-") as tmp:
        tmp = Path(tmp)
        export_dir = Path(args.export) if args.export else tmp / "model"
        if args.run_dir:
            subprocess.run(kcap("export", "--run-dir", args.run_dir, "--output", str(export_dir),
                                "--beam-size", str(args.beam_size)), check=True, stdout=subprocess.DEVNULL)
        paths = image_paths(args)
        bodies = [json.dumps({"instances": [{"b64": base64.b64encode(p.read_bytes()).decode()}]}).encode()
                  for p in paths]
        rows = []
        for batching, flags in (
            ("on", ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]),
            ("off", ["--no-batching"]),
        ):
            with Server(export_dir, flags, tmp / "serve.log") as server:
                run_level(server.port, bodies, 1, args.warmup, args.seconds)
                for clients in args.clients:
                    before = server.metadata()
                    row = run_level(server.port, bodies, clients, args.requests, args.seconds)
                    after = server.metadata()
                    calls = after["model_calls"] - before["model_calls"]
                    images = after["images_captioned"] - before["images_captioned"]
                    rows.append({"batching": batching, **row, "model_calls": calls,
                                 "mean_batch": round(images / calls, 2) if calls else None})
        info = json.loads((export_dir / "assets" / "export.json").read_text())
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": {k: info.get(k) for k in ("run_dir", "beam_size", "image_size", "vocabulary_size", "decoder")},
        "images": len(paths),
        "settings": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                     "requests": args.requests, "seconds": args.seconds},
        "levels": rows,
        "speedup": speedups(rows),
    }
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))
    return 0


def image_paths(args) -> list[Path]:
    if args.images:
        folder = Path(args.images)
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    elif args.run_dir:
        splits = json.loads((Path(args.run_dir) / "splits.json").read_text())["splits"]
        paths = [Path(item["image"]) for item in splits["test"]]
    else:
        raise SystemExit("bench_serve: give --images FOLDER with --export.")
    if not paths:
        raise SystemExit(f"bench_serve: no {'/'.join(IMAGE_SUFFIXES)} images in {args.images}.")
    return paths[:256]


def speedups(rows: list[dict]) -> dict:
    """Captions per second with batching over without, per client count."""
    by = {(r["batching"], r["clients"]): r["captions_per_s"] for r in rows}
    return {str(c): round(by["on", c] / by["off", c], 2) for (b, c) in by if b == "on" and by.get(("off", c))}


def markdown(report: dict) -> str:
    lines = [
        f"{report['date']}, {report['machine']['cpus']} CPUs, {report['images']} images, "
        f"beam size {report['model']['beam_size']}, image size {report['model']['image_size']}",
        "",
        "| batching | clients | requests | errors | captions/s | p50 ms | p99 ms | model calls | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["levels"]:
        lines.append(f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['captions_per_s']} "
                     f"| {r['p50_ms']} | {r['p99_ms']} | {r['model_calls']} | {r['mean_batch']} |")
    lines += ["", "Speed-up of batching (captions/s, on / off): "
              + ", ".join(f"{c} clients {s}x" for c, s in report["speedup"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
