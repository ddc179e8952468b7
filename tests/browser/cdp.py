"""Drive headless Chromium through the DevTools protocol over a pipe (no websocket library needed).

Console messages on stderr (`--enable-logging=stderr`) carry no level, so errors would have to be
guessed from their text; the protocol reports levels, uncaught exceptions and blocked requests
exactly, and gives a screenshot of the same page load.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """The browser executable: $TRACEKIT_CHROMIUM, else the first of CANDIDATES on PATH."""
    env = os.environ.get("TRACEKIT_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    """What one page load produced."""

    errors: list[str] = field(default_factory=list)   # console errors, exceptions, failed loads
    warnings: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    value: Any = None                                   # result of the wait expression
    screenshot: bytes = b""                             # PNG of the whole page
    parts: list[bytes] = field(default_factory=list)    # PNGs of the requested page slices


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, proc: subprocess.Popen) -> None:
        self.w, self.r, self.proc = write_fd, read_fd, proc
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass


def _describe_console(params: dict) -> str:
    parts = []
    for arg in params.get("args", []):
        parts.append(str(arg.get("value", arg.get("description", arg.get("type")))))
    return " ".join(parts)


def _high_pipe() -> tuple[int, int]:
    # Above fd 4, so that wiring the child's fds 3 and 4 can never overwrite a pipe end.
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def load_page(url: str, wait_expr: str = "true", timeout: float = 60.0, width: int = 1280,
              browser: str | None = None, slices: list[tuple[int, int]] = ()) -> PageLoad:
    """Open `url` in a fresh headless Chromium profile, wait until `wait_expr` is truthy, and
    return console errors, warnings, requested URLs, the expression's value and a screenshot."""
    exe = browser or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium executable found")
    profile = tempfile.mkdtemp(prefix="tracekit-chromium-")
    to_child_r, to_child_w = _high_pipe()
    from_child_r, from_child_w = _high_pipe()

    def _wire_fds() -> None:
        # Chromium's --remote-debugging-pipe reads commands on fd 3 and writes on fd 4.
        os.dup2(to_child_r, 3)
        os.dup2(from_child_w, 4)

    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=_wire_fds, close_fds=False,  # close_fds would close 3 and 4 after the dup2
    )
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(to_child_w, from_child_r, proc)
    result = PageLoad()
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.call("Page.navigate", {"url": url}, session=session)
        deadline = time.monotonic() + timeout
        while True:
            got = pipe.call("Runtime.evaluate", {"expression": wait_expr, "returnByValue": True},
                            session=session)
            result.value = got.get("result", {}).get("value")
            if result.value or time.monotonic() > deadline:
                break
            pipe.drain(0.2)
        pipe.drain(0.5)  # late errors from rendering that finished just now
        metrics = pipe.call("Page.getLayoutMetrics", session=session)
        height = int(metrics.get("cssContentSize", metrics.get("contentSize", {})).get("height", 900))
        pipe.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": min(max(height, 300), 16000), "deviceScaleFactor": 1,
                   "mobile": False}, session=session)
        shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)
        result.screenshot = base64.b64decode(shot["data"])
        for top, h in slices:
            clip = {"x": 0, "y": top, "width": width, "height": h, "scale": 1}
            part = pipe.call("Page.captureScreenshot", {"format": "png", "clip": clip}, session=session)
            result.parts.append(base64.b64decode(part["data"]))
        pipe.drain(0.1)
    finally:
        try:
            pipe.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_child_w)
        os.close(from_child_r)
        shutil.rmtree(profile, ignore_errors=True)
    for ev in pipe.events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = _describe_console(params)
            if params.get("type") in ("error", "assert"):
                result.errors.append(f"console.error: {text}")
            elif params.get("type") == "warning":
                result.warnings.append(f"console.warn: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            result.errors.append(f"exception: {desc}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            line = f"log[{entry.get('source')}]: {entry.get('text')} {entry.get('url', '')}".strip()
            if entry.get("level") == "error":
                result.errors.append(line)
            elif entry.get("level") == "warning":
                result.warnings.append(line)
        elif method == "Network.requestWillBeSent":
            result.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            result.errors.append(f"load failed: {params.get('errorText')}")
    return result


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()
