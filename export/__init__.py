"""Export: events out of the daemon, without ever blocking capture."""

from export.config import QUEUE_BYTES, EventLogConfig, GrpcConfig, TlsFiles
from export.formats import FORMATS, check_format, line_encoder, mapper_for
from export.jsonl import ExportFileError, RotatingFile, Serializer, process_dict
from export.siem import FormatSerializer, convert
from export.sink import (
    EncodedSink,
    Fanout,
    LineFanout,
    PairFanout,
    QueuedWriter,
    Sink,
    StreamLines,
)

__all__ = [
    "FORMATS",
    "QUEUE_BYTES",
    "EncodedSink",
    "EventLogConfig",
    "ExportFileError",
    "Fanout",
    "FormatSerializer",
    "GrpcConfig",
    "LineFanout",
    "PairFanout",
    "QueuedWriter",
    "RotatingFile",
    "Serializer",
    "Sink",
    "StreamLines",
    "TlsFiles",
    "check_format",
    "convert",
    "line_encoder",
    "mapper_for",
    "process_dict",
]
