# Type information of the C extension export/_pbwire.c.

from collections.abc import Callable
from typing import Any

STRING: int
BOOL: int
UINT32: int
UINT64: int
INT32: int
INT64: int
MESSAGE: int
TIMESTAMP: int
MAP: int
OPTIONAL: int
REPEATED: int

class Message:
    def __init__(
        self, fields: tuple[tuple[int, int, int, str | None, Message | None], ...]
    ) -> None: ...
    def encode(self, obj: object) -> bytes: ...
    def sized(self, obj: object) -> bytes: ...

ANCESTORS_NONE: int
ANCESTORS_BRIEF: int
ANCESTORS_FULL: int

class Cache:
    def __init__(
        self,
        table: Message,
        limit: int,
        max_bytes: int,
        prepare: Callable[[Any], object] | None = None,
        measure: Message | None = None,
    ) -> None: ...
    def get(self, p: object) -> bytes: ...
    @property
    def entries(self) -> int: ...
    @property
    def held(self) -> int: ...

class Events:
    def __init__(
        self,
        heads: dict[type, tuple[Message, bool]],
        whole: Cache,
        cut: Cache,
        brief: Cache,
        ancestors: int,
        tags: bytes,
        whole_bytes: int,
        max_bytes: int,
    ) -> None: ...
    def encode(self, ev: object) -> bytes: ...
    def framed(self, ev: object) -> bytes: ...
    def items(
        self, events: list[Any], skip: type
    ) -> tuple[
        list[tuple[str, bytes]], list[Any], int, list[Any], list[tuple[Any, Exception]]
    ]: ...
