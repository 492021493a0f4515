"""Check the built documentation in a real headless browser, and take screenshots.

Serves ``docs/_build/html`` on a local port, opens pages in headless Chromium (driven over the DevTools protocol
through a pipe: no driver, no Python package beyond the standard library), and checks that each page

- is served without error, and every file it loads from the site is found (no 4xx/5xx, no failed local request);
- renders: a title, a first heading, the theme's layout and style sheets, and a body of text;
- shows its figures: every ``<img>`` has loaded and has a size (the tutorial page must have at least one);
- lays them out: no title, heading, navigation entry or API table cell is cut off (its text wider than its box,
  e.g. ``cellformers.model.XTrimoG…``), no figure reaches past the text column, the page never scrolls sideways,
  and tutorial pages give their column at least :data:`MIN_TUTORIAL_WIDTH` pixels (1280-pixel window).

A screenshot of each page is written to ``docs/_build/screenshots/`` (the first screen and the full page).
Requests to other hosts (MathJax from a CDN, say) are reported but do not fail the check, so it runs offline.

Usage (after ``make docs``)::

    python docs/check_browser.py                       # index, an API page, the quick-start tutorial
    python docs/check_browser.py --pages index.html api.html --chromium /usr/bin/chromium

Chromium: Debian's ``chromium`` package (``apt-get install chromium``), or any Chrome/Chromium given by
``--chromium`` or the ``CHROMIUM`` environment variable. Exit status 0 when every page passes, 1 otherwise, 2 when no
browser or no built site is found.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_HTML = HERE / "_build" / "html"
DEFAULT_OUT = HERE / "_build" / "screenshots"
#: Pages checked by default, relative to the site root, with the number of figures each must show at least.
DEFAULT_PAGES: dict[str, int] = {
    "index.html": 0,
    "api/generated/cellformers.model.XTrimoGene.html": 0,
    "api/generated/cellformers.pl.embedding.html": 0,
    "tutorials/notebooks/01_quickstart.html": 1,
    "tutorials/notebooks/03_scformer.html": 1,
}
#: Smallest width in pixels of a tutorial's text column, so that UMAP grids and heatmaps are readable.
MIN_TUTORIAL_WIDTH = 900
#: Elements whose text must fit their box (checked with scrollWidth > clientWidth).
_TEXT_BOXES = (
    "h1, h2, h3, .bd-breadcrumbs li, .bd-sidebar-primary li, .bd-sidebar-secondary li, .bd-toc-item, nav.bd-links li, "
    "table.autosummary td, dt.sig, .bd-header .navbar-item"
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

_PAGE_STATE_JS = """
(() => {
  const imgs = Array.from(document.images).map(i => ({
    src: (i.currentSrc || i.src).slice(0, 200), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
  }));
  const h1 = document.querySelector("h1");
  const article = document.querySelector("article") || document.querySelector("main") || document.body;
  return {
    title: document.title,
    h1: h1 ? h1.innerText.replace(/[#¶]/g, "").trim() : null,
    text_length: article ? article.innerText.length : 0,
    stylesheets: document.styleSheets.length,
    themed: !!document.querySelector(".bd-header, .bd-main, .bd-container"),
    body_font: getComputedStyle(document.body).fontFamily,
    images: imgs,
    height: Math.max(document.body.scrollHeight, document.documentElement.scrollHeight),
    article_width: article ? article.getBoundingClientRect().width : 0,
    page_overflow: document.documentElement.scrollWidth - window.innerWidth,
    cut: Array.from(document.querySelectorAll(TEXT_BOXES)).filter(e => {
      // innermost boxes only (an entry, not the list holding it)
      if (!e.offsetWidth || getComputedStyle(e).display === "inline" || e.querySelector(TEXT_BOXES)) return false;
      if (e.scrollWidth > e.clientWidth + 1) return true;  // its text is wider than its own box
      // or its text runs past the window, or past an ancestor that clips (overflow hidden/clip)
      let text = null;
      const walker = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        if (!n.textContent.trim()) continue;
        const range = document.createRange();
        range.selectNodeContents(n);
        for (const b of range.getClientRects()) {
          text = text ? {left: Math.min(text.left, b.left), right: Math.max(text.right, b.right)} : b;
        }
      }
      if (!text) return false;
      if (text.right > window.innerWidth + 1) return true;
      for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
        const o = getComputedStyle(p).overflowX;
        if (o === "auto" || o === "scroll") return false;
        if (o === "hidden" || o === "clip") {
          const box = p.getBoundingClientRect();
          return text.right > box.right + 1 || text.left < box.left - 1;
        }
      }
      return false;
    }).map(e => e.innerText.replace(/[#¶]/g, "").trim().slice(0, 80)),
    overflowing_images: (article ? Array.from(article.querySelectorAll("img")) : []).filter(i => {
      const r = i.getBoundingClientRect(), a = article.getBoundingClientRect();
      return r.width > 0 && (r.right > a.right + 2 || r.left < a.left - 2);
    }).map(i => (i.currentSrc || i.src).slice(-80)),
  };
})()
""".replace("TEXT_BOXES", json.dumps(_TEXT_BOXES))


def find_chromium(explicit: str | None = None) -> str | None:
    """Path of a Chromium/Chrome executable: ``explicit``, ``$CHROMIUM``, or the first browser on ``PATH``."""
    for candidate in (explicit, os.environ.get("CHROMIUM")):
        if candidate:
            return shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


# ---------------------------------------------------------------------------------------------------------------
# a static server that records what it answered
# ---------------------------------------------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    log: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        try:
            status = int(code)
        except (TypeError, ValueError):
            status = 0
        self.log.append((self.path, status))

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(root: Path) -> tuple[ThreadingHTTPServer, list[tuple[str, int]], str]:
    """Serve ``root`` on a free local port in a thread; returns the server, its request log and its base URL."""
    log: list[tuple[str, int]] = []
    handler = functools.partial(type("Handler", (_Handler,), {"log": log}), directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, log, f"http://127.0.0.1:{server.server_address[1]}/"


# ---------------------------------------------------------------------------------------------------------------
# Chrome DevTools protocol over --remote-debugging-pipe (fd 3: commands in, fd 4: replies out; NUL-separated JSON)
# ---------------------------------------------------------------------------------------------------------------


class Browser:
    """A headless Chromium driven over the DevTools pipe."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 900):
        self.profile = tempfile.mkdtemp(prefix="cellformers-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # above any fd the child may use, so that moving them to 3 and 4 cannot clobber each other
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 64)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 64)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)

        def child_fds() -> None:
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [
            executable,
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4, high_r, high_w),
            preexec_fn=child_fds,
        )
        os.close(high_r)
        os.close(high_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        self.width, self.height = width, height

    # -- transport
    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _read_message(self, timeout: float) -> dict[str, Any] | None:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                msg = "the browser closed the DevTools pipe"
                raise RuntimeError(msg)
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, *, timeout: float = 60.0, session: bool = True) -> dict:
        """Send a command (to the attached page unless ``session=False``) and wait for its result."""
        msg_id = self._send(method, params, self.session if session else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._read_message(deadline - time.monotonic())
            if msg is None:
                break
            if msg.get("id") == msg_id:
                if "error" in msg:
                    err = f"{method}: {msg['error']}"
                    raise RuntimeError(err)
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        err = f"{method}: no reply within {timeout:.0f} s"
        raise TimeoutError(err)

    def wait_for(self, method: str, *, timeout: float = 60.0) -> dict | None:
        """Wait for an event of the attached page (events that arrived earlier count)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == self.session:
                    return event
            seen = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            msg = self._read_message(left)
            if msg is not None and "method" in msg:
                self.events.append(msg)

    def drain(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read_message(left)
            if msg is not None and "method" in msg:
                self.events.append(msg)

    # -- page
    def open_page(self) -> None:
        """Attach to a new page target and enable the domains the checks need."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def navigate(self, url: str, *, settle: float = 1.5, timeout: float = 60.0) -> None:
        """Load ``url``, wait for its load event, then let late requests (images, fonts) finish."""
        self.events.clear()
        self.call("Page.navigate", {"url": url})
        if self.wait_for("Page.loadEventFired", timeout=timeout) is None:
            err = f"{url}: no load event within {timeout:.0f} s"
            raise TimeoutError(err)
        self.drain(settle)

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            err = f"JavaScript error: {result['exceptionDetails'].get('text')}"
            raise RuntimeError(err)
        return result["result"].get("value")

    def screenshot(self, path: Path, *, full_height: int | None = None) -> None:
        """PNG of the viewport, or of the page down to ``full_height`` pixels."""
        params: dict[str, Any] = {"format": "png"}
        if full_height:
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": self.width, "height": full_height, "scale": 1}
        data = self.call("Page.captureScreenshot", params, timeout=120)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Quit the browser and remove its profile."""
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PageReport:
    """What the browser saw on one page."""

    page: str
    status: int | None = None
    title: str = ""
    heading: str | None = None
    text_length: int = 0
    images: list[dict[str, Any]] = field(default_factory=list)
    local_errors: list[str] = field(default_factory=list)
    external_failures: list[str] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the page passed."""
        return not self.problems


def check_page(browser: Browser, base: str, page: str, min_images: int, out: Path, log) -> PageReport:
    """Open one page and check it (see the module docstring)."""
    report = PageReport(page)
    url = base + page
    start = len(log)
    browser.navigate(url)
    responses = {
        e["params"]["requestId"]: e["params"]["response"]
        for e in browser.events
        if e.get("method") == "Network.responseReceived"
    }
    requests = {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    }
    for response in responses.values():
        if response["url"].rstrip("/") == url.rstrip("/"):
            report.status = int(response["status"])
        automatic = response["url"] == base + "favicon.ico"
        if response["url"].startswith(base) and int(response["status"]) >= 400 and not automatic:
            report.local_errors.append(f"{response['status']} {response['url'][len(base) :]}")
    for e in browser.events:
        if e.get("method") == "Network.loadingFailed" and not e["params"].get("canceled"):
            failed = requests.get(e["params"]["requestId"], "?")
            line = f"{e['params'].get('errorText', 'failed')}: {failed[:150]}"
            (report.local_errors if failed.startswith(base) else report.external_failures).append(line)
    for path, status in log[start:]:
        if status >= 400 and path != "/favicon.ico":  # asked for by the browser itself, not by the page
            report.local_errors.append(f"{status} {path} (server log)")
    report.local_errors = sorted(set(report.local_errors))

    state = browser.evaluate(_PAGE_STATE_JS)
    report.title = state["title"]
    report.heading = state["h1"]
    report.text_length = int(state["text_length"])
    report.images = state["images"]

    if report.status != 200:
        report.problems.append(f"page answered {report.status}")
    if report.local_errors:
        report.problems.append(f"{len(report.local_errors)} local resources failed: {report.local_errors[:5]}")
    if not report.title or not report.heading:
        report.problems.append("no title or no first heading")
    if not state["themed"] or state["stylesheets"] < 2:
        report.problems.append(f"theme not applied ({state['stylesheets']} style sheets)")
    if report.text_length < 200:
        report.problems.append(f"almost no text ({report.text_length} characters)")
    broken = [i["src"] for i in report.images if not i["complete"] or i["width"] == 0 or i["height"] == 0]
    if broken:
        report.problems.append(f"{len(broken)} images did not load: {broken[:3]}")
    figures = [i for i in report.images if i["width"] >= 100 and i["height"] >= 100]
    if len(figures) < min_images:
        report.problems.append(f"{len(figures)} figures shown, at least {min_images} expected")
    report.problems += layout_problems(page, state)

    stem = page.replace("/", "__").removesuffix(".html")
    out.mkdir(parents=True, exist_ok=True)
    first = out / f"{stem}.png"
    browser.screenshot(first)
    full = out / f"{stem}__full.png"
    browser.screenshot(full, full_height=min(int(state["height"]), 12000))
    report.screenshots = [str(first), str(full)]
    return report


def layout_problems(page: str, state: dict[str, Any]) -> list[str]:
    """Cut-off text, figures past the text column, sideways scrolling, and a too narrow tutorial column."""
    problems = []
    if state.get("cut"):
        problems.append(f"{len(state['cut'])} titles or entries cut off: {state['cut'][:5]}")
    if state.get("overflowing_images"):
        problems.append(
            f"{len(state['overflowing_images'])} figures overflow the text column: {state['overflowing_images'][:3]}"
        )
    if state.get("page_overflow", 0) > 1:
        problems.append(f"the page scrolls sideways by {state['page_overflow']} pixels")
    if page.startswith("tutorials/") and state.get("article_width", 0) < MIN_TUTORIAL_WIDTH:
        problems.append(
            f"tutorial column {state.get('article_width', 0):.0f} px wide, at least {MIN_TUTORIAL_WIDTH} expected"
        )
    return problems


def run_checks(
    html: Path = DEFAULT_HTML,
    pages: dict[str, int] | None = None,
    out: Path = DEFAULT_OUT,
    chromium: str | None = None,
) -> list[PageReport]:
    """Check ``pages`` (page -> minimum number of figures) of the site in ``html``."""
    executable = find_chromium(chromium)
    if executable is None:
        msg = "no Chromium found: install Debian's `chromium` package or pass --chromium / set CHROMIUM"
        raise FileNotFoundError(msg)
    if not (html / "index.html").is_file():
        msg = f"no built site at {html}: run `make docs` first"
        raise FileNotFoundError(msg)
    pages = dict(DEFAULT_PAGES if pages is None else pages)
    browser = Browser(executable)  # before the server thread starts (the child is set up with preexec_fn)
    server, log, base = serve(html)
    reports = []
    try:
        browser.open_page()
        for page, min_images in pages.items():
            if not (html / page).is_file():
                reports.append(PageReport(page, problems=[f"{page} is not in the built site"]))
                continue
            reports.append(check_page(browser, base, page, min_images, out, log))
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
    return reports


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, default=DEFAULT_HTML, help="built site (default: docs/_build/html)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="screenshots (default: docs/_build/screenshots)")
    parser.add_argument("--pages", nargs="*", help="pages to check, relative to the site root")
    parser.add_argument("--min-images", type=int, default=None, help="figures each given page must show")
    parser.add_argument("--chromium", default=None, help="browser executable (default: chromium on PATH)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    pages = None
    if args.pages:
        pages = {p: args.min_images or DEFAULT_PAGES.get(p, 0) for p in args.pages}
    try:
        reports = run_checks(args.html, pages, args.out, args.chromium)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.__dict__ | {"ok": r.ok} for r in reports], indent=2))
    for r in reports:
        figures = sum(1 for i in r.images if i["width"] >= 100 and i["height"] >= 100)
        print(
            f"{'ok  ' if r.ok else 'FAIL'} {r.page}: HTTP {r.status}, {r.text_length} characters, "
            f"{len(r.images)} images ({figures} figures), {len(r.local_errors)} local errors, "
            f"{len(r.external_failures)} external requests failed"
        )
        for problem in r.problems:
            print(f"     - {problem}")
        for shot in r.screenshots:
            print(f"     screenshot: {shot}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
