"""Helpers of the serve tests: a real ``finecut serve`` in a subprocess, small test photos."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def coffee(width: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's coffee photo (ships with it) resized to ``width`` and the demo's coarse
    polygon mask at that size: (H, W, 3) uint8, (H, W) uint8 0/255."""
    import cv2

    from finecut.demo import demo_inputs

    image, coarse = demo_inputs()
    h = round(image.shape[0] * width / image.shape[1])
    small = cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(coarse.astype(np.uint8) * 255, (width, h), interpolation=cv2.INTER_NEAREST)
    return small, mask


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """An array as image-file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


class LiveServer:
    """``python -m finecut serve --port 0 ARGS`` in a subprocess; ``url`` once it listens."""

    def __init__(self, *args: str, timeout: float = 120.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src")] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "finecut", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.url = ""
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("finecut serve: http://"):
                    self.url = line.split()[2].rstrip("/")
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError("finecut serve did not start:\n" + "\n".join(self.lines[-20:]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory (VmHWM), in MB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM")

    def stop(self, timeout: float = 20.0) -> int:
        """Ctrl-C (SIGINT), wait; kill if it does not stop. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        time.sleep(0.1)  # let the pump read the last lines
        return self.proc.returncode

    def output(self) -> str:
        return "\n".join(self.lines)
