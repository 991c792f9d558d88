"""Export: events out of the daemon, without ever blocking capture."""

from export.jsonl import RotatingFile, Serializer, process_dict
from export.sink import EncodedSink, LineFanout, QueuedWriter, Sink, StreamLines

__all__ = [
    "EncodedSink",
    "LineFanout",
    "QueuedWriter",
    "RotatingFile",
    "Serializer",
    "Sink",
    "StreamLines",
    "process_dict",
]
