"""``controller.heap.trim`` gives freed heap pages back: memory freed below a live
allocation stays resident (glibc only shrinks the heap from its top), and ``trim()``
returns it. Measured in a fresh interpreter so nothing else shares the heap."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json
from controller.heap import trim

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

blocks = [bytes(4096) for _ in range(40_000)]  # ~160 MB from malloc's heap, not mmap
pin = bytes(4096)  # above them: the heap cannot shrink from the top
del blocks
before = rss_mb()
trim()
print(json.dumps({"before": before, "after": rss_mb()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_returns_freed_heap_memory() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    figures = json.loads(out.stdout)
    assert figures["before"] - figures["after"] > 100, figures
