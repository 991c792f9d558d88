"""Export: events out of the daemon, without ever blocking capture."""

from export.config import QUEUE_BYTES, EventLogConfig, GrpcConfig, TlsFiles
from export.jsonl import ExportFileError, RotatingFile, Serializer, process_dict
from export.sink import EncodedSink, LineFanout, QueuedWriter, Sink, StreamLines

__all__ = [
    "QUEUE_BYTES",
    "EncodedSink",
    "EventLogConfig",
    "ExportFileError",
    "GrpcConfig",
    "LineFanout",
    "QueuedWriter",
    "RotatingFile",
    "Serializer",
    "Sink",
    "StreamLines",
    "TlsFiles",
    "process_dict",
]
