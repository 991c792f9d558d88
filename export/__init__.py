"""Export: events out of the daemon, without ever blocking capture."""

from export.jsonl import RotatingFile, Serializer, process_dict
from export.sink import QUEUE_BYTES, EncodedSink, LineFanout, QueuedWriter, Sink, StreamLines

__all__ = [
    "QUEUE_BYTES",
    "EncodedSink",
    "LineFanout",
    "QueuedWriter",
    "RotatingFile",
    "Serializer",
    "Sink",
    "StreamLines",
    "process_dict",
]
