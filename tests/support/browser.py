"""A real headless browser for tests that look at rendered pages: Debian's Chromium, which
`make test` installs where it can (the Makefile's `browser` target).

With CI=true a missing browser fails the run; elsewhere the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags for a root user on a machine with a closed network (no sandbox, no background fetches).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1")
TIMEOUT_S = 60


def chromium() -> str:
    """The browser's path (TRIALFLOW_CHROMIUM, or the first candidate on PATH)."""
    chosen = os.environ.get("TRIALFLOW_CHROMIUM")
    found = chosen if chosen and Path(chosen).exists() else next(
        (path for name in CANDIDATES if (path := shutil.which(name))), None)
    if found:
        return found
    problem = "no Chromium found (tried TRIALFLOW_CHROMIUM, " + ", ".join(CANDIDATES) + ")"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {problem}: `make test` installs Debian's chromium; the "
                    "browser tests must run in CI.")
    pytest.skip(f"{problem}; install Debian's chromium (`make browser`) to run them")


def run(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless run of the browser on a local page, with a fresh profile."""
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def screenshot(page: Path, target: Path, profile: Path, width: int, height: int) -> Path:
    run(page, profile, f"--window-size={width},{height}", f"--screenshot={target}")
    assert target.exists(), f"the browser wrote no screenshot of {page}"
    return target


def dom(page: Path, profile: Path, width: int = 1000) -> str:
    """The page's DOM after its scripts ran (a test's own copy may add one that measures)."""
    return run(page, profile, f"--window-size={width},800", "--dump-dom").stdout


def pdf(page: Path, target: Path, profile: Path) -> bytes:
    run(page, profile, "--no-pdf-header-footer", f"--print-to-pdf={target}")
    return target.read_bytes()
