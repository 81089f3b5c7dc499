"""The README's picture of the page: docs/img/serve.png (not a benchmark; it lives with the
scripts that make the docs' figures).

    .venv/bin/python bench/serve_screenshot.py            # writes docs/img/serve.png

Starts ``finecut serve --port 0``, opens the page in headless Chromium (Debian's chromium and
chromedriver, driven by Selenium), opens scikit-image's coffee photo, brushes roughly over the
cup and saucer, runs, and saves a screenshot of the window with the result (cropped below the
panels).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (tool, points): highlighter strokes over the cup and saucer ("erase" would be the background
#: brush); points are fractions of the canvas (x, y).
STROKES = [
    (
        "brush",
        [
            (0.36, 0.16),
            (0.62, 0.14),
            (0.38, 0.34),
            (0.66, 0.36),
            (0.24, 0.52),
            (0.74, 0.52),
            (0.26, 0.7),
            (0.72, 0.74),
            (0.36, 0.86),
            (0.6, 0.88),
        ],
    ),
]


def _start_server() -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "finecut", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            if line.startswith("finecut serve: http://"):
                found.append(line.split()[2].rstrip("/"))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(180) or not found:
        proc.kill()
        raise SystemExit("finecut serve did not start")
    return proc, found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "img" / "serve.png")
    ap.add_argument("--size", default="1400,780", help="browser window, W,H")
    args = ap.parse_args()

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from skimage import data

    work = Path(tempfile.mkdtemp())
    photo = work / "coffee.jpg"
    Image.fromarray(data.coffee()).save(photo, quality=95)
    proc, url = _start_server()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={args.size}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/")
        driver.find_element(By.ID, "photo-input").send_keys(str(photo))
        WebDriverWait(driver, 30).until(
            lambda d: not d.find_element(By.ID, "run-btn").get_property("disabled")
        )
        canvas = driver.find_element(By.ID, "marks-canvas")
        w, h = canvas.rect["width"], canvas.rect["height"]
        for tool, stroke in STROKES:
            driver.find_element(By.CSS_SELECTOR, f'[data-tool="{tool}"]').click()
            chain = ActionChains(driver)
            x, y = stroke[0]
            chain.move_to_element_with_offset(canvas, round((x - 0.5) * w), round((y - 0.5) * h))
            chain.click_and_hold()
            for x, y in stroke[1:]:
                chain.move_to_element_with_offset(
                    canvas, round((x - 0.5) * w), round((y - 0.5) * h)
                )
            chain.release().perform()
        driver.find_element(By.ID, "run-btn").click()
        WebDriverWait(driver, 300).until(
            lambda d: d.find_element(By.ID, "result-img").get_attribute("data-ready") == "1"
        )
        time.sleep(1.0)  # the status line refreshes after the run
        args.output.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.output))
        bottom = driver.execute_script(
            "return Math.max(...[...document.querySelectorAll('#panel-cut .step, #panel-cut "
            ".pane')].map(e => e.getBoundingClientRect().bottom))"
        )
        with Image.open(args.output) as shot:
            shot.crop((0, 0, shot.width, min(shot.height, round(bottom) + 18))).save(args.output)
        print(f"wrote {args.output}")
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


if __name__ == "__main__":
    main()
