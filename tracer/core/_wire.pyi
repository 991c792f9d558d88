# Type information of the C extension tracer/core/_wire.c.

from typing import Any

FILE_PATH_OFFSET: int
CONNECT_SIZE: int
VERDICT_OFFSET: int

class Decoder:
    def __init__(
        self, task: type, file_open: type, connect: type, verdict: type, wire_error: type
    ) -> None: ...
    def decode(self, raw: bytes, /) -> Any: ...
    def verdict(self, raw: bytes, /) -> Any: ...
