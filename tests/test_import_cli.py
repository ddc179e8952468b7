"""The import command as a person at a terminal sees it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import KINETO_L2, NSYS_L2


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO once the child side is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def test_terminal_shows_a_progress_bar_per_file_then_its_result(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracekit.outputs.cli", "import", str(KINETO_L2), str(NSYS_L2),
         "--db", str(tmp_path / "t.duckdb")],
        stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"})
    os.close(slave)
    out = _read_all(master)
    assert proc.wait(timeout=120) == 0
    os.close(master)
    # The bar (rich) names the file and its phase, drawn every phase however short it is.
    for phase in ("reading", "storing", "stages", "classifying"):
        assert f" {phase}…" in out
    assert "[1/2] " + KINETO_L2.name in out and "[2/2] " + NSYS_L2.name in out
    assert "\r\x1b[2K" in out  # the bar is redrawn in place, not scrolled
    # Each result line is printed above the bar, and the bar is gone at the end.
    assert f"[1/2] {KINETO_L2}: imported as run 1" in out and f"[2/2] {NSYS_L2}: imported as run 2" in out
    assert out.rstrip().endswith("2 imported")


def test_piped_stderr_gets_plain_lines_only(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tracekit.outputs.cli", "import", str(KINETO_L2), "--db", str(tmp_path / "p.duckdb")],
        capture_output=True, text=True)
    assert proc.returncode == 0
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    assert proc.stderr.splitlines() == [f"[1/1] {KINETO_L2}: imported as run 1 ({_kernels()} kernels, "
                                        + proc.stderr.split("kernels, ")[1].splitlines()[0], "1 imported"]


def _kernels() -> int:
    import gzip
    import json

    return sum(1 for e in json.loads(gzip.decompress(KINETO_L2.read_bytes()))["traceEvents"] if e.get("cat") == "kernel")
