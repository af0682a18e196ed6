"""simplebev_core.allocator: freed tensor memory is reused instead of faulted in again."""
from __future__ import annotations

import subprocess
import sys

import pytest

FAULTS = """
import resource, sys, torch
from simplebev_core.allocator import keep_freed_memory
accepted = keep_freed_memory() if sys.argv[1] == "keep" else None
u = torch.zeros(6, 3, 225, 400, dtype=torch.uint8)
for _ in range(10):
    (u.float() / 255.0).sum()  # the heap grows to its working set (pages faulted in once)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    (u.float() / 255.0).sum()  # two 6.5 MB tensors per iteration
print(accepted, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    """(whether glibc accepted the settings, page faults over 40 alloc/free iterations)."""
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's allocator only")
def test_kept_memory_is_reused_without_page_faults():
    accepted, kept = faults("keep")
    assert accepted == "True"
    # Without it glibc usually maps and faults in ~3200 fresh pages per iteration (it adapts
    # its threshold only sometimes); kept memory is reused.
    assert kept < 40 * 50
