"""The JSON output's formats: native (the tracer.v1 schema), OCSF, ECS."""

from __future__ import annotations

from collections.abc import Callable

from export.ecs import EcsMapper
from export.jsonl import Serializer
from export.ocsf import OcsfMapper
from export.siem import FORMATS, FormatSerializer, Mapper
from tracer.core.events import Event

__all__ = ["FORMATS", "check_format", "line_encoder", "mapper_for"]


def check_format(fmt: str, what: str = "--format") -> None:
    """ValueError naming the formats, for one that is not among them."""
    if fmt not in FORMATS:
        raise ValueError(f"{what}: unknown format {fmt!r} (choose {', '.join(FORMATS)})")


def mapper_for(fmt: str, product_version: str) -> Mapper:
    """The converter from native event dicts to `fmt` (ocsf or ecs)."""
    if fmt == "ocsf":
        return OcsfMapper(product_version)
    if fmt == "ecs":
        return EcsMapper()
    check_format(fmt)
    raise ValueError(f"the {fmt} format needs no conversion")


def line_encoder(fmt: str, product_version: str) -> Callable[[Event], bytes]:
    """Event -> JSON line in `fmt`."""
    if fmt == "native":
        return Serializer().line
    return FormatSerializer(mapper_for(fmt, product_version)).line
