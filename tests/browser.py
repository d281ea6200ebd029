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
#: The skip reason of every test that needs Chromium: what is missing and how to install it.
NO_CHROMIUM = ("no chromium binary on PATH: PNG export and the browser checks of the HTML need it; install it with "
               "apt-get install chromium")


def chromium() -> str | None:
    """Path of a Chromium binary, or None when none is installed."""
    for c in CANDIDATES:
        if Path(c).is_file():
            return c
    return shutil.which("chromium") or shutil.which("chromium-headless-shell")


def dump_dom(html: Path, budget_ms: int = 5000, timeout_s: float = 120.0) -> str:
    """The serialised DOM of ``html`` after ``budget_ms`` of virtual time (scripts, plotly drawing)."""
    return dump_doms([html], budget_ms, timeout_s)[0]


def dump_doms(pages: list[Path], budget_ms: int = 5000, timeout_s: float = 120.0) -> list[str]:
    """`dump_dom` for several pages, rendered by concurrent Chromium processes (each with its own profile)."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium binary: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="hyla-chromium-") as tmp:
        procs = []
        for i, page in enumerate(pages):
            cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage", f"--user-data-dir={tmp}/profile{i}", "--dump-dom",
                   f"--virtual-time-budget={budget_ms}", Path(page).resolve().as_uri()]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            if proc.returncode != 0 or not out:
                raise RuntimeError(f"chromium failed (rc {proc.returncode}): {err[-2000:]}")
            outs.append(out)
    return outs
