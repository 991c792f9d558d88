# Type information of the C extension tracer/core/_wire.c.

from typing import Any, Generic, TypeVar

_T = TypeVar("_T")

FILE_PATH_OFFSET: int
CONNECT_SIZE: int
VERDICT_OFFSET: int

class Decoder:
    def __init__(
        self, task: type, file_open: type, connect: type, verdict: type, wire_error: type
    ) -> None: ...
    def decode(self, raw: bytes, /) -> Any: ...
    def verdict(self, raw: bytes, /) -> Any: ...

class Maker(Generic[_T]):
    def __init__(self, cls: type[_T], fields: tuple[str, ...]) -> None: ...
    def __call__(self, *values: object) -> _T: ...
