"""The page in a real browser: headless Chromium (Debian's chromium + chromedriver, driven by
Selenium) opens a photo, brushes a rough mask, runs, sees the result and downloads the cut-out.

Skips with the reason when selenium, chromium or chromedriver is missing (``.ci/run`` installs
them with apt when it runs as root).
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from tests.serve._live import LiveServer, encode

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server():
    live = LiveServer("--queue", "4")
    yield live
    live.stop()


@pytest.fixture()
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def brush(driver, element, points) -> None:
    """Drag the mouse over ``element`` through ``points`` (fractions of its width and height)."""
    from selenium.webdriver.common.action_chains import ActionChains

    w, h = element.rect["width"], element.rect["height"]

    def offset(p):
        return round((p[0] - 0.5) * w), round((p[1] - 0.5) * h)

    chain = ActionChains(driver).move_to_element_with_offset(element, *offset(points[0]))
    chain.click_and_hold()
    for p in points[1:]:
        chain.move_to_element_with_offset(element, *offset(p))
    chain.release().perform()


def wait_for(driver, condition, timeout: float = 120.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def test_brush_run_and_download(server, browser, photo, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    image = photo[0]
    path = tmp_path / "coffee.jpg"
    path.write_bytes(encode(image, "JPEG"))
    browser.get(server.url + "/")
    assert browser.title == "finecut"
    browser.find_element(By.ID, "photo-input").send_keys(str(path))
    wait_for(browser, lambda d: not d.find_element(By.ID, "run-btn").get_property("disabled"), 30)
    assert "300×200" in browser.find_element(By.ID, "photo-info").text
    # highlighter strokes over the cup and saucer
    brush(
        browser,
        browser.find_element(By.ID, "marks-canvas"),
        [(0.3, 0.4), (0.7, 0.35), (0.35, 0.6), (0.75, 0.6), (0.3, 0.75), (0.65, 0.8)],
    )
    browser.find_element(By.ID, "run-btn").click()
    wait_for(
        browser,
        lambda d: (
            d.find_element(By.ID, "result-img").get_attribute("data-ready") == "1"
            or d.find_element(By.ID, "cut-error").is_displayed()
        ),
    )
    assert not browser.find_element(By.ID, "cut-error").is_displayed(), browser.find_element(
        By.ID, "cut-error"
    ).text
    result = browser.find_element(By.ID, "result-img")
    assert result.is_displayed()
    assert browser.execute_script("return arguments[0].naturalWidth", result) == 300
    assert browser.find_element(By.ID, "cut-progress").get_attribute("hidden") is not None

    link = browser.find_element(By.ID, "dl-cutout")
    assert link.get_attribute("download") == "coffee_cutout.png"
    link.click()
    target = browser.downloads / "coffee_cutout.png"
    wait_for(browser, lambda d: target.is_file() and target.stat().st_size > 0, 30)
    time.sleep(0.3)  # the browser renames the finished file into place; let it settle
    with Image.open(target) as cut:
        assert cut.format == "PNG" and cut.mode == "RGBA" and cut.size == (300, 200)
        rgba = np.asarray(cut)
    alpha = rgba[:, :, 3]
    assert 0.15 < (alpha > 127).mean() < 0.95  # an object was cut out, not all or nothing
    np.testing.assert_array_equal(rgba[:, :, :3], np.asarray(Image.open(path).convert("RGB")))

    # the overlay and alpha views render, and the soft toggle changes the cut-out
    browser.find_element(By.CSS_SELECTOR, '[data-view="overlay"]').click()
    assert browser.find_element(By.ID, "result-img").get_attribute("src").startswith("data:")
    browser.find_element(By.CSS_SELECTOR, '[data-view="cutout"]').click()
    soft_src = result.get_attribute("src")
    browser.find_element(By.ID, "soft-alpha").click()
    assert result.get_attribute("src") != soft_src
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_soft_tab_shows_layers(server, browser, photo, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "coffee.png"
    path.write_bytes(encode(photo[0]))
    browser.get(server.url + "/")
    browser.find_element(By.ID, "tab-soft").click()
    browser.find_element(By.ID, "soft-photo-input").send_keys(str(path))
    wait_for(
        browser, lambda d: not d.find_element(By.ID, "soft-run-btn").get_property("disabled"), 30
    )
    browser.execute_script("document.getElementById('soft-layers').value = 3")
    browser.find_element(By.ID, "soft-run-btn").click()
    wait_for(
        browser,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, ".layer-card img")
            or d.find_element(By.ID, "soft-error").is_displayed()
        ),
    )
    assert not browser.find_element(By.ID, "soft-error").is_displayed()
    cards = browser.find_elements(By.CSS_SELECTOR, ".layer-card img")
    assert 1 <= len(cards) <= 3
    assert browser.find_element(By.ID, "soft-composite").is_displayed()


def test_errors_show_in_one_line(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "photo.png"
    path.write_bytes(encode(np.full((60, 80, 3), 128, np.uint8)))
    browser.get(server.url + "/")
    browser.find_element(By.ID, "photo-input").send_keys(str(path))
    wait_for(browser, lambda d: not d.find_element(By.ID, "run-btn").get_property("disabled"), 30)
    browser.find_element(By.ID, "run-btn").click()  # no marks yet
    error = browser.find_element(By.ID, "cut-error")
    wait_for(browser, lambda d: error.is_displayed(), 10)
    assert "Brush over the object" in error.text
