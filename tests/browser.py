"""Render an HTML file in Debian's headless Chromium and return the DOM after scripts ran.

Used by tests to prove that a plotly page really draws (the ``main-svg`` element with points only exists after
plotly.js executed), not merely that a file was written.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell", "/usr/bin/chromium-browser")


def chromium() -> str | None:
    """Path of a Chromium binary, or None when none is installed."""
    for c in CANDIDATES:
        if Path(c).is_file():
            return c
    return shutil.which("chromium") or shutil.which("chromium-headless-shell")


def dump_dom(html: Path, budget_ms: int = 5000, timeout_s: float = 90.0) -> str:
    """The serialised DOM of ``html`` after ``budget_ms`` of virtual time (scripts, plotly drawing)."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium binary: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="hyla-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom",
               f"--virtual-time-budget={budget_ms}", Path(html).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"chromium failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout
