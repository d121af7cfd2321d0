"""The installed package passes ``mypy --strict`` (through its py.typed), for Linux and for
Windows: the named-pipe code, which no test can run here, is at least type-checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_the_installed_package_type_checks_strictly(platform: str, tmp_path: Path) -> None:
    # The e2e module keeps mypy's cache in the venv, so only the first run takes seconds.
    cache = Path(os.environ.get("DPOP_TEST_MYPY_CACHE") or tmp_path) / platform
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--platform", platform,
         "--cache-dir", str(cache), "-p", "dpop_agent"],
        cwd=tmp_path,  # not the checkout: the package pip installed is what is checked
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found in 10 source files" in result.stdout, result.stdout
