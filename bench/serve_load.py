"""`finecut serve` under load: latency per request, throughput, 503s and peak server memory.

    .venv/bin/python bench/serve_load.py               # 1 MP photo, 50 requests, 8 at a time
    .venv/bin/python bench/serve_load.py --queue 2     # a small queue: fast 503s
    .venv/bin/python bench/serve_load.py --endpoint cutout --requests 20

Starts ``finecut serve --port 0`` in a subprocess on loopback (its own flags from --queue,
--workers, --threads), waits for its address, then:

1. one warm-up request, then ``--sequential`` requests one at a time: the latency of one request
   on an idle server (upload, decode, refine with snapping, PNG encode, download);
2. ``--requests`` requests from ``--concurrency`` client threads at once: the status of every
   answer (200 or 503), the latency of the 200s (queue wait included), the wall time;
3. the server's peak resident memory (VmHWM) after start, after 1 and after 2.

The photo is ``../shared/data/highres/h36m.jpg`` (1000x1002, 1.0 MP) with its coarse mask, or,
when that folder is absent, scikit-image's coffee photo upscaled to 1224x816 (1.0 MP) with the
demo's coarse polygon. Loopback only; every loop is bounded. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIGHRES = ROOT.parent / "shared" / "data" / "highres"


def _photo() -> tuple[str, bytes, bytes]:
    """(description, image bytes, mask bytes) of a 1 MP photo and its coarse mask."""
    if (HIGHRES / "h36m.jpg").is_file():
        return (
            "h36m.jpg 1000x1002 (JPEG) + h36m_coarse.jpg",
            (HIGHRES / "h36m.jpg").read_bytes(),
            (HIGHRES / "h36m_coarse.jpg").read_bytes(),
        )
    import cv2
    import numpy as np
    from PIL import Image

    from finecut.demo import demo_inputs

    image, coarse = demo_inputs()
    big = cv2.resize(image, (1224, 816), interpolation=cv2.INTER_LANCZOS4)
    mask = cv2.resize(coarse.astype(np.uint8) * 255, (1224, 816), interpolation=cv2.INTER_NEAREST)
    out = []
    for array, fmt in ((big, "JPEG"), (mask, "PNG")):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt, quality=92)
        out.append(buf.getvalue())
    return "coffee upscaled to 1224x816 (JPEG) + demo polygon", out[0], out[1]


class _Server:
    def __init__(self, flags: list[str]) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])
        )
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finecut", "serve", "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.url = ""
        found = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                if line.startswith("finecut serve: http://"):
                    self.url = line.split()[2].rstrip("/")
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(180) or not self.url:
            self.proc.kill()
            raise SystemExit("finecut serve did not start")
        self.startup_s = time.perf_counter() - t0

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sequential", type=int, default=5)
    ap.add_argument("--queue", type=int, default=8, help="the server's --queue")
    ap.add_argument("--workers", type=int, default=1, help="the server's --workers")
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads")
    ap.add_argument("--endpoint", choices=("refine", "cutout"), default="refine")
    args = ap.parse_args()
    if not (1 <= args.requests <= 500 and 1 <= args.concurrency <= 64):
        raise SystemExit("keep it bounded: 1..500 requests, 1..64 at a time")

    import httpx

    what, image, mask = _photo()
    flags = ["--queue", str(args.queue), "--workers", str(args.workers)]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    server = _Server(flags)
    url = f"{server.url}/api/{args.endpoint}"
    files = {"image": ("photo.jpg", image, "image/jpeg"), "mask": ("mask", mask, "image/png")}
    rss = {"start": server.peak_rss_mb()}

    def one(_: int) -> tuple[int, float]:
        with httpx.Client(timeout=600) as client:
            t0 = time.perf_counter()
            r = client.post(url, files=files)
            return r.status_code, time.perf_counter() - t0

    try:
        assert one(0)[0] == 200, "the warm-up request failed"
        seq = [one(i) for i in range(args.sequential)]
        assert all(code == 200 for code, _ in seq)
        rss["sequential"] = server.peak_rss_mb()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        rss["concurrent"] = server.peak_rss_mb()
    finally:
        server.stop()

    seq_s = [s for _, s in seq]
    ok = [s for code, s in answers if code == 200]
    codes = sorted({code for code, _ in answers})
    counts = ", ".join(f"{sum(c == code for c, _ in answers)} x {code}" for code in codes)
    print(f"photo: {what}; endpoint /api/{args.endpoint}; server flags: {' '.join(flags)}")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"server start (refiner loaded, listening): {server.startup_s:.1f} s\n")
    print(
        "| phase | requests | at a time | answers | latency p50 / p90 / max (s) | wall (s) "
        "| req/s | peak RSS (MB) |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|")
    print(
        f"| idle server, one at a time | {len(seq)} | 1 | {len(seq)} x 200 | "
        f"{statistics.median(seq_s):.2f} / {_pct(seq_s, 0.9):.2f} / {max(seq_s):.2f} | "
        f"{sum(seq_s):.1f} | {len(seq) / sum(seq_s):.2f} | {rss['sequential']:.0f} |"
    )
    lat = f"{statistics.median(ok):.2f} / {_pct(ok, 0.9):.2f} / {max(ok):.2f}" if ok else "-"
    print(
        f"| concurrent | {args.requests} | {args.concurrency} | {counts} | {lat} | {wall:.1f} | "
        f"{len(ok) / wall:.2f} | {rss['concurrent']:.0f} |"
    )
    busy = [s for code, s in answers if code == 503]
    if busy:
        print(
            f"\n503 answers: p50 {1000 * statistics.median(busy):.0f} ms, "
            f"max {1000 * max(busy):.0f} ms"
        )
    print(f"\npeak RSS right after start: {rss['start']:.0f} MB")


if __name__ == "__main__":
    main()
