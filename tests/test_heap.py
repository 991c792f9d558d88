"""tracer.heap: freed C heap goes back to the kernel when asked, not at every free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tracer import heap


def _anon_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_trim_hands_freed_heap_pages_back() -> None:
    # 60 KB objects come from the malloc heap (below the mmap threshold),
    # not Python's small-object allocator; freeing every other one leaves
    # holes the heap cannot shrink over, resident until trimmed.
    keep = [bytearray(b"x") * 60_000 for _ in range(1_000)]
    del keep[::2]
    before = _anon_kb()
    assert heap.trim()
    after = _anon_kb()
    assert before - after > 15_000, (before, after)  # 30 MB were freed
    assert len(keep) == 500 and all(b[-1] == ord("x") for b in keep)


# A batch of posted events' lines made and freed, as the pipeline and its
# writer do; prints the page faults of 200 batches after heap.settle() or not.
_BATCHES = """
import resource, sys
from tracer import heap
if sys.argv[1] == "settled":
    heap.settle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):
    lines = [bytes(5_000) for _ in range(256)]
    buffer = bytearray(300_000)  # a compression buffer
    del lines, buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    out = subprocess.run(
        [sys.executable, "-c", _BATCHES, mode], env={**environ, **env},
        capture_output=True, text=True, check=True,
    )
    return int(out.stdout)


def test_the_settled_heap_keeps_a_batchs_memory_instead_of_faulting_it_in_again() -> None:
    # 1.3 MB of lines freed at the top of the heap was given back at glibc's
    # 128 KiB trim threshold, and faulted in again by the next batch.
    settled, default = _faults("settled"), _faults("default")
    assert settled * 10 < default, (settled, default)


def test_an_operators_malloc_settings_win() -> None:
    assert _faults("settled", MALLOC_TRIM_THRESHOLD_="131072") > 10 * _faults("settled")


_CYCLE = """
import gc, weakref
from tracer import heap
gc.disable()  # only settle() may collect it
class Node:
    pass
a = Node(); a.me = a
dead = weakref.ref(a)
del a
heap.settle()
print(dead() is None)
"""


def test_settling_frees_the_cyclic_garbage_instead_of_freezing_it() -> None:
    out = subprocess.run([sys.executable, "-c", _CYCLE], capture_output=True, text=True, check=True)
    assert out.stdout == "True\n"
