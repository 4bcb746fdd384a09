"""The browser the tests drive."""

from __future__ import annotations

import os
import shutil

import pytest


def chromium_or_skip() -> str:
    """Debian's Chromium (never a downloaded browser); a test without it skips, except in CI, where it fails."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Chromium is not installed (make system-deps, or apt install chromium)"
        if os.environ.get("LCMS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found
