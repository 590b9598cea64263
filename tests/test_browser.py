"""End-to-end check in a real headless Chromium against `streamlit run app.py`.

Uploads a gallery slice and a DICOM built here, and checks what a clinician
would see: the verdict, the outlined scan, mm² sizes and the PDF download.
Skips when Chromium or the trained weights are missing (CI installs both).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_GALLERY, HAS_WEIGHTS, ROOT, dicom_bytes, phantom, png_bytes
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
STARTUP_S = 90  # server start; the first analysis also loads TensorFlow
ANALYSIS_MS = 240_000
VERDICT = re.compile(r"(No tumour|Tumour) detected")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing"),
    pytest.mark.skipif(not HAS_WEIGHTS, reason="weights/manifest.json missing: no weights"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server():
    """A fresh ``streamlit run app.py`` on a free loopback port; yields its URL."""
    port = free_port()
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    env.pop("TUMOR_WEIGHTS_DIR", None)
    env.pop("TUMOR_GALLERY_DIR", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {proc.stderr.read()[-2000:]!r}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server_url():
    with streamlit_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.goto(server_url, wait_until="domcontentloaded")
    pg.locator("input[type=file]").first.wait_for(state="attached", timeout=ANALYSIS_MS)
    yield pg
    context.close()


def gallery_tumour_slice() -> Path | None:
    """The first gallery tumour slice with an expert mask, if any."""
    if not HAS_GALLERY:
        return None
    with (ROOT / "gallery" / "index.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["label"] != "no_tumor" and row["mask"]:
                return ROOT / "gallery" / row["image"]
    return None


def upload(page, name: str, data: bytes, mime: str) -> None:
    page.locator("input[type=file]").first.set_input_files(files=[{"name": name, "mimeType": mime, "buffer": data}])
    page.get_by_text(VERDICT).first.wait_for(timeout=ANALYSIS_MS)


def test_upload_slice_shows_verdict_and_outline(page, tmp_path):
    path = gallery_tumour_slice()
    if path is not None:
        name, data = path.name, path.read_bytes()
    else:
        name, data = "phantom.png", png_bytes(phantom(256))
    mime = "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png"
    upload(page, name, data, mime)
    assert page.get_by_text("Research demo, not for diagnosis").first.is_visible()
    caption = page.get_by_text(re.compile(r"Model outline \(red\)|No tumour outlined")).first
    caption.wait_for(timeout=30_000)
    images = page.locator("[data-testid=stImage] img")
    assert images.count() >= 1
    # The <img> can be in the page a moment before its pixels arrive: wait for it to decode,
    # and fail if it never does (a broken image never reaches naturalWidth > 0).
    page.wait_for_function(
        "() => { const i = document.querySelector('[data-testid=stImage] img');"
        " return i !== null && i.complete && i.naturalWidth > 0; }",
        timeout=30_000,
    )
    assert page.get_by_text("P(tumour)").first.is_visible()
    page.screenshot(path=str(tmp_path / "analyze.png"), full_page=True)
    if path is not None:
        assert page.get_by_text("Tumour detected", exact=True).first.is_visible()


def test_dicom_upload_shows_mm_and_pdf(page, tmp_path):
    path = gallery_tumour_slice()
    if path is None:
        pytest.skip("gallery/index.csv missing: no real tumour slice to wrap in DICOM")
    gray = np.asarray(Image.open(path).convert("L"))
    upload(page, "IM0001", dicom_bytes(gray, spacing=0.9), "application/dicom")
    page.get_by_text("mm²").first.wait_for(timeout=30_000)
    pdf = page.get_by_role("button", name="PDF report")
    # The page streams: the measurements show before the PDF is built; wait (raises if it never comes).
    pdf.wait_for(state="visible", timeout=60_000)
    assert pdf.is_visible()
    with page.expect_download(timeout=60_000) as info:
        pdf.click()
    saved = tmp_path / "report.pdf"
    info.value.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF")
    assert b"Doe" not in saved.read_bytes()
    page.screenshot(path=str(tmp_path / "dicom.png"), full_page=True)


@pytest.mark.parametrize(
    ("path", "heading"),
    [("gallery", "Gallery of real test cases"), ("model_card", "Model card"), ("about", "About this demo")],
)
def test_deep_link_is_the_first_request_of_a_fresh_server(browser, path, heading):
    # A fresh server per page: the deep link is the first page it serves, as for a shared URL.
    with streamlit_server() as url:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            pg = context.new_page()
            pg.goto(f"{url}/{path}", wait_until="domcontentloaded")
            pg.get_by_role("heading", name=heading).first.wait_for(timeout=60_000)
            assert pg.get_by_text("Research demo, not for diagnosis").first.is_visible()
            for title in ("Analyze", "Gallery", "Model card", "About"):
                # exact: a page's own prose can hold a link whose text contains a menu title
                pg.get_by_role("link", name=title, exact=True).first.wait_for(state="visible", timeout=30_000)
            assert pg.get_by_text("Page not found").count() == 0
        finally:
            context.close()
