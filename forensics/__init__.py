"""Forensics: reading the event log, its index, and the process tree built from it."""

from forensics.index import IndexBuilder
from forensics.log import Problems, Segment, list_segments
from forensics.store import LogIndex
from forensics.tree import Forest, Node, Selection, build

__all__ = [
    "Forest",
    "IndexBuilder",
    "LogIndex",
    "Node",
    "Problems",
    "Segment",
    "Selection",
    "build",
    "list_segments",
]
