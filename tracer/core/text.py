"""Kernel bytes to text, reversibly.

Process names, arguments and paths are bytes with no encoding promise.
Valid UTF-8 passes through unchanged. Anything else is escaped so that
nothing is lost and the original bytes can be rebuilt: each byte that is
not part of valid UTF-8 becomes `\\xHH` and, in that same string, each
backslash becomes `\\\\`. Callers flag such strings (`non_utf8`) so a
consumer knows which strings to unescape.
"""

from __future__ import annotations


def decode(raw: bytes) -> tuple[str, bool]:
    """The text of `raw`, and whether it had to be escaped."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", "surrogateescape").replace("\\", "\\\\")
    out = []
    for ch in text:
        o = ord(ch)
        out.append(f"\\x{o - 0xDC00:02x}" if 0xDC80 <= o <= 0xDCFF else ch)
    return "".join(out), True


def encode(text: str) -> bytes:
    """Inverse of decode() for a string that was escaped."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "\\":
                out += b"\\"
                i += 2
                continue
            if nxt == "x" and i + 3 < len(text):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
        out += ch.encode("utf-8")
        i += 1
    return bytes(out)
