"""Load test: ``python -m tumor.lab.loadtest [--sessions 20] [--rounds 2]``.

Starts ``streamlit run app.py`` on a free loopback port and drives it with N
concurrent sessions. Each session opens the Analyze page, and all of them
upload at once a slice of their own (a gallery tumour slice with one pixel
changed, so that no two sessions share the app's per-slice cache) and wait for
the verdict. A second round does the same with fresh sessions and fresh slices.

Two clients (``--client``):

- ``browser`` (default): Playwright on Debian's Chromium, one context per
  session; the wait ends when the verdict is on the page. On one machine the
  20 browsers share the server's cores, so this measures both.
- ``protocol``: Streamlit's own protocol, as its front end speaks it, with no
  browser: a websocket per session (``/_stcore/stream``, with the XSRF token),
  the upload endpoint (``/_stcore/upload_file``), then a rerun carrying the
  uploader's state; the wait ends when the verdict's element arrives. This
  measures the server alone, as clients on other machines would see it.

Prints, per round, how many sessions got their verdict and the median, 90th
percentile and longest wait from upload to verdict, and the server's resident
memory (its process and any children): before the first session, after one
warm-up session (the models loaded), after each round, and the peak sampled
every 0.2 s. The machine's load average is printed with each round. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import functools
import http.cookies
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic"]
VERDICT = re.compile(r"(No tumour|Tumour) detected")
XSRF_COOKIE = "_streamlit_xsrf"
STARTUP_S = 300  # server start; the first load may build the compiled networks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int) -> float:
    """Resident memory of a process and its children, MiB."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


class _Peak(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds and keeps the largest."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, _rss_mib(self.pid))
            self._halt.wait(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


@contextlib.contextmanager
def streamlit_server():
    """A fresh ``streamlit run app.py``; yields (url, pid)."""
    port = _free_port()
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true"]
    cmd += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start: {proc.stderr.read()[-2000:]!r}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tumour_slices() -> list[np.ndarray]:
    """The gallery's tumour slices, RGB uint8."""
    with (ROOT / "gallery" / "index.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != "no_tumor"]
    return [np.asarray(Image.open(ROOT / "gallery" / r["image"]).convert("RGB")) for r in rows]


def unique_png(slices: list[np.ndarray], k: int) -> bytes:
    """Slice ``k`` of the cycle with one corner pixel set to ``k``'s own value: a slice no other session sends."""
    img = slices[k % len(slices)].copy()
    img[0, 0] = (k % 251, (k // 251) % 251, 7)
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    return buffer.getvalue()


async def _browser_session(browser, url: str, data: bytes, name: str, ready, timeout_s: float) -> float:
    """One browser session: open the page, ``await ready()``, upload, return seconds to the verdict."""
    timeout_ms = timeout_s * 1000
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = await context.new_page()
        await page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
        upload = page.locator("input[type=file]").first
        await upload.wait_for(state="attached", timeout=timeout_ms)
        await ready()
        t0 = time.perf_counter()
        await upload.set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": data}])
        await page.get_by_text(VERDICT).first.wait_for(timeout=timeout_ms)
        return time.perf_counter() - t0
    finally:
        await context.close()


def _xsrf_token(url: str) -> str:
    """The XSRF cookie the server sets on its health endpoint ("" when XSRF protection is off)."""
    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=30) as r:
        cookie = http.cookies.SimpleCookie(r.headers.get("Set-Cookie", ""))
    return cookie[XSRF_COOKIE].value if XSRF_COOKIE in cookie else ""


def _put_file(url: str, upload_path: str, name: str, data: bytes, xsrf: str) -> None:
    """Uploads one file as the front end does: a multipart PUT with the XSRF header and cookie."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    body = (head + "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if xsrf:
        headers |= {"X-Xsrftoken": xsrf, "Cookie": f"{XSRF_COOKIE}={xsrf}"}
    request = urllib.request.Request(f"{url}{upload_path}", data=body, headers=headers, method="PUT")
    with urllib.request.urlopen(request, timeout=60) as r:
        if r.status not in (200, 204):
            raise RuntimeError(f"upload answered HTTP {r.status}")


async def _protocol_session(url: str, data: bytes, name: str, ready, timeout_s: float) -> float:
    """One protocol session: open the page, wait for the others, upload, return seconds to the verdict."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.Common_pb2 import FileURLs, UploadedFileInfo
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    async def until(ws, wanted):
        """Reads messages until ``wanted(message)`` returns something; returns it."""
        while True:
            msg = ForwardMsg()
            msg.ParseFromString(await ws.recv())
            if (found := wanted(msg)) is not None:
                return found

    def rerun(widgets=()) -> bytes:
        back = BackMsg()
        back.rerun_script.query_string = ""
        back.rerun_script.widget_states.widgets.extend(widgets)
        return back.SerializeToString()

    def verdict(msg):
        if msg.WhichOneof("type") == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            if element.WhichOneof("type") == "markdown" and VERDICT.search(element.markdown.body):
                return True
        return None

    seen: dict = {}

    def page_ready(msg):  # the session id and the uploader's widget id, then the end of the first run
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            seen["session"] = msg.new_session.initialize.session_id
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            if msg.delta.new_element.WhichOneof("type") == "file_uploader" and "uploader" not in seen:
                seen["uploader"] = msg.delta.new_element.file_uploader.id
        elif kind == "script_finished":
            return True
        return None

    xsrf = await asyncio.to_thread(_xsrf_token, url)
    async with (
        asyncio.timeout(timeout_s),
        websockets.connect(
            url.replace("http", "ws", 1) + "/_stcore/stream",
            subprotocols=["streamlit", xsrf or "PLACEHOLDER"],
            additional_headers={"Origin": url, **({"Cookie": f"{XSRF_COOKIE}={xsrf}"} if xsrf else {})},
            max_size=None,
        ) as ws,
    ):
        await ws.send(rerun())
        await until(ws, page_ready)
        if "uploader" not in seen:
            raise RuntimeError("the page drew no file uploader")
        await ready()
        t0 = time.perf_counter()
        ask = BackMsg()
        ask.file_urls_request.request_id = name
        ask.file_urls_request.file_names.append(name)
        ask.file_urls_request.session_id = seen["session"]
        await ws.send(ask.SerializeToString())
        urls = await until(
            ws,
            lambda m: (
                m.file_urls_response.file_urls[0]
                if m.WhichOneof("type") == "file_urls_response" and m.file_urls_response.response_id == name
                else None
            ),
        )
        await asyncio.to_thread(_put_file, url, urls.upload_url, name, data, xsrf)
        state = WidgetState(id=seen["uploader"])
        state.file_uploader_state_value.uploaded_file_info.append(
            UploadedFileInfo(
                file_id=urls.file_id,
                name=name,
                size=len(data),
                file_urls=FileURLs(file_id=urls.file_id, upload_url=urls.upload_url, delete_url=urls.delete_url),
            )
        )
        await ws.send(rerun([state]))
        await until(ws, verdict)
        return time.perf_counter() - t0


async def _round(client, url: str, payloads: list[bytes], tag: str, timeout_s: float) -> list[float | None]:
    """Every session opens its page; once all have (or given up), all upload at once.

    ``client(url, data, name, ready, timeout_s)`` runs one session: it awaits
    ``ready()`` once its page is open and returns seconds to the verdict. A
    session that fails is reported and counted as None, not fatal.
    """
    start, waiting = asyncio.Event(), [len(payloads)]

    def arrive() -> None:  # this session is ready, or out: either way the others need not wait for it
        waiting[0] -= 1
        if not waiting[0]:
            start.set()

    async def one(k: int, data: bytes) -> float | None:
        name, arrived = f"{tag}_{k}.png", False

        async def ready() -> None:
            nonlocal arrived
            arrived = True
            arrive()
            await start.wait()

        try:
            return await client(url, data, name, ready, timeout_s)
        except Exception as err:
            first = str(err).splitlines()[0][:160] if str(err) else ""
            print(f"  session {name} failed: {type(err).__name__}: {first}", flush=True)
            return None
        finally:
            if not arrived:
                arrive()

    return await asyncio.gather(*(one(k, data) for k, data in enumerate(payloads)))


def _summary(waits: list[float | None]) -> str:
    ok = sorted(w for w in waits if w is not None)
    if not ok:
        return f"0 of {len(waits)} sessions got a verdict"
    p90 = ok[min(len(ok) - 1, round(0.9 * (len(ok) - 1)))]
    return (
        f"{len(ok)} of {len(waits)} got a verdict: median {statistics.median(ok):6.1f} s, "
        f"p90 {p90:6.1f} s, max {ok[-1]:6.1f} s"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


async def _rounds(client, url: str, pid: int, args: argparse.Namespace) -> None:
    slices = tumour_slices()
    t0 = time.perf_counter()
    (warm,) = await _round(client, url, [unique_png(slices, 10_000)], "warm", args.timeout)
    print(
        f"warm-up session (loads the models): {'failed' if warm is None else f'{warm:.1f} s'} to the "
        f"verdict, {time.perf_counter() - t0:.1f} s with the page; RSS {_rss_mib(pid):7.0f} MiB",
        flush=True,
    )
    for r in range(args.rounds):
        payloads = [unique_png(slices, r * args.sessions + k) for k in range(args.sessions)]
        print(f"round {r + 1}: {args.sessions} sessions  [{_load()}]", flush=True)
        waits = await _round(client, url, payloads, f"r{r + 1}", args.timeout)
        await asyncio.sleep(2.0)  # let the sessions' disconnects reach the server
        print(f"  {_summary(waits)}; server RSS after the round {_rss_mib(pid):7.0f} MiB", flush=True)


async def _main(args: argparse.Namespace) -> None:
    with streamlit_server() as (url, pid):
        peak = _Peak(pid)
        peak.start()
        print(f"server {url} (pid {pid}), {args.client} client; RSS before any session {_rss_mib(pid):7.0f} MiB")
        if args.client == "protocol":
            await _rounds(_protocol_session, url, pid, args)
        else:
            from playwright.async_api import async_playwright

            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                try:
                    await _rounds(functools.partial(_browser_session, browser), url, pid, args)
                finally:
                    await browser.close()
        print(f"server peak RSS {peak.stop():7.0f} MiB  [{_load()}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of fresh sessions (default: %(default)s)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a session may wait (default: %(default)s)")
    parser.add_argument(
        "--client",
        choices=["browser", "protocol"],
        default="browser",
        help="Chromium pages, or Streamlit's websocket protocol without a browser (default: %(default)s)",
    )
    parser.add_argument("--chromium", default=CHROMIUM, help="the browser to drive (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.rounds < 1:
        parser.error(f"--sessions and --rounds must be at least 1. Received: {args.sessions}, {args.rounds}")
    if args.client == "browser" and not Path(args.chromium).exists():
        parser.error(f"{args.chromium} is missing; install Chromium or pass --chromium PATH")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
