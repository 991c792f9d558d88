"""tracer.heap: freed C heap goes back to the kernel."""

from __future__ import annotations

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
