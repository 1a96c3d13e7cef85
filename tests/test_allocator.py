"""keep_freed_memory: a freed large block is reused without faulting its pages in again; the environment's choice stands."""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

FAULTS = """
import json, resource, sys, torch
from lit_grok.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def block():
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, freed at once
    torch.empty(1000)  # and a small one after it
for _ in range(20):  # the heap settles
    block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str, **env: str) -> dict:
    """Page faults of ten 64 MiB tensors, each freed before the next, in a fresh process (mallopt is process-wide)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120,
                         env={**environment, **env}, check=True).stdout
    return json.loads(out.splitlines()[-1])


PAGES = 10 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # of the ten blocks


def test_a_freed_block_is_reused_without_faulting_its_pages_in():
    assert faults("default")["faults"] > PAGES // 2  # glibc maps each block afresh: its pages fault in again
    kept = faults("keep")
    assert kept["kept"] is True and kept["faults"] < PAGES // 100


def test_the_environments_allocator_settings_stand():
    chosen = faults("keep", MALLOC_MMAP_MAX_="65536")
    assert chosen["kept"] is False and chosen["faults"] > PAGES // 2
