"""Headless Chromium helpers for the tests that look at pages as a user would."""
import os
import shutil
import socket
import subprocess
import tempfile

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


MISSING = "chromium is not installed; `make browser` installs Debian's package"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_required() -> bool:
    """In CI (CI=true) or with SMALLSET_REQUIRE_BROWSER=1 a missing chromium fails the browser tests
    instead of skipping them, so a CI run never passes without having looked at the pages."""
    return (os.environ.get("CI", "").strip().lower() == "true"
            or os.environ.get("SMALLSET_REQUIRE_BROWSER", "").strip() == "1")


def chromium() -> str:
    path = chromium_path()
    if path is None:
        raise RuntimeError(MISSING)
    return path


def _run(url: str, extra: list[str], timeout: int = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
                              capture_output=True, text=True, timeout=timeout)


def screenshot(url: str, path: str, size: str = "1280,1600", wait_ms: int = 0) -> str:
    extra = [f"--screenshot={path}", f"--window-size={size}"]
    if wait_ms:
        extra.append(f"--virtual-time-budget={wait_ms}")
    _run(url, extra)
    if not os.path.exists(path):
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    return path


def dom(url: str, wait_ms: int = 0) -> str:
    extra = ["--dump-dom"] + ([f"--virtual-time-budget={wait_ms}"] if wait_ms else [])
    return _run(url, extra).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_is_not_blank(path: str) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        lo, hi = im.convert("L").getextrema()
    return hi - lo > 50
