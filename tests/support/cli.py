"""The installed ``slipway`` program, run as a user runs it (tests/cli).

Tests call the console script of the virtualenv the suite runs in (what the README's
``pip install`` makes), as a subprocess against a real ``slipway serve``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SLIPWAY = Path(sys.executable).with_name("slipway")


def slipway(
    *args: str, env: dict[str, str], check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SLIPWAY), *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"slipway {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result
