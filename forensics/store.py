"""The directory-level lookup: every closed segment's sidecar rows in one SQLite file.

Sidecars (forensics/index.py) are the per-segment truth: written with
their segment, copied with it, never out of date. Loading every sidecar
for one query costs seconds on a large log, though (a row per process per
segment, hundreds of thousands of them), so each log directory also has
`index.sqlite`, into which the daemon's closing thread adds a segment's
rows once it is compressed (one transaction per segment, off the event
path), and from which it deletes expired ones. A query then reads only
the rows it asks for, through B-tree indexes on exec_id, pid, parent and
pod.

The database is a cache of the sidecars, never the only copy: a reader
adds any segment it lacks (a crash between sidecar and database, a
directory copied without it) and ignores rows of segments that are gone.

Only the daemon writes the database, in the log directory it made. A
reader never writes into the directory it reads (a log copied from
another node may hold a symlink named index.sqlite, and a root reader
that created it would write where the link points): it opens the
database read-only, and only a regular file of root's, not through a
link, in a directory only root can change; otherwise it does without.
What the database lacks, a reader adds to tables of its own in memory.
The daemon keeps it in rollback-journal mode, which a read-only reader
can read without creating files next to it (WAL needs a -shm file).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import stat
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forensics.index import Row, load_sidecar, scan
from forensics.log import Problems, Segment
from tracer.core import safefile

DB_NAME = "index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    name TEXT PRIMARY KEY, sidecar_bytes INTEGER, first_ns INTEGER, last_ns INTEGER,
    events INTEGER);
CREATE TABLE IF NOT EXISTS procs (
    seg TEXT, exec_id TEXT, pid INTEGER, parent TEXT, binary TEXT, start_ns INTEGER,
    first_ns INTEGER, last_ns INTEGER, namespace TEXT, pod TEXT, bits INTEGER);
CREATE INDEX IF NOT EXISTS procs_exec_id ON procs (exec_id);
CREATE INDEX IF NOT EXISTS procs_pid ON procs (pid);
CREATE INDEX IF NOT EXISTS procs_parent ON procs (parent);
CREATE INDEX IF NOT EXISTS procs_pod ON procs (namespace, pod);
CREATE INDEX IF NOT EXISTS procs_seg ON procs (seg);
"""
_COLUMNS = "seg, exec_id, pid, parent, binary, start_ns, first_ns, last_ns, namespace, pod, bits"


def connect(path: Path) -> sqlite3.Connection:
    """The daemon's database in its own log directory, created (mode 0600: it names
    processes) if missing. One found there must be a regular file of root's."""
    try:
        os.close(os.open(path, os.O_WRONLY | safefile.CREATE_FLAGS, 0o600))
    except FileExistsError:
        fd = os.open(path, safefile.READ_FLAGS)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0:
            raise safefile.UnsafeFile(
                f"{path} is {safefile.kind(st.st_mode)} of uid {st.st_uid}, "
                "not a regular file of root's: remove it"
            ) from None
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")  # readers open it read-only (see above)
    conn.execute("PRAGMA synchronous=NORMAL")
    # One transaction: in rollback mode each commit costs a few fsyncs.
    conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
    return conn


_SQLITE_MAGIC = b"SQLite format 3\0"


def readonly_uri(path: Path) -> str | None:
    """A read-only URI of the database at `path` when a reader may use it, else None.

    It must be a regular file of root's that others cannot write, not a
    link, in a directory only root can change (so the name cannot be
    swapped between this check and SQLite's open), in rollback-journal
    mode (a WAL database makes even a read-only reader create files).
    """
    try:
        fd = os.open(path, safefile.READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or safefile.changed_by(st) is not None:
            return None
        header = os.pread(fd, 20, 0)
    finally:
        os.close(fd)
    if header[:16] != _SQLITE_MAGIC or header[18:20] != b"\x01\x01":
        return None
    try:
        if safefile.shared_directory([path.parent]) is not None:
            return None
    except OSError:
        return None
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"


def _insert(conn: sqlite3.Connection, table: str, name: str, data: dict[str, Any]) -> None:
    rows: dict[str, Row] = data["processes"]
    conn.executemany(
        f"INSERT INTO {table} ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        ((name, e, *r[:9]) for e, r in rows.items()),
    )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction, or a part of the one already open. In rollback-journal mode
    each commit costs a few fsyncs, so a writer with many segments at once (a
    backlog, tiny segments) adds them in one."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def add_segment(
    conn: sqlite3.Connection, name: str, sidecar_bytes: int, data: dict[str, Any], schema: str = ""
) -> None:
    """One segment's rows, all or none; a segment already there is replaced."""
    with transaction(conn):
        conn.execute(f"DELETE FROM {schema}procs WHERE seg = ?", (name,))
        conn.execute(f"DELETE FROM {schema}segments WHERE name = ?", (name,))
        conn.execute(
            f"INSERT INTO {schema}segments VALUES (?,?,?,?,?)",
            (name, sidecar_bytes, data["first_ns"], data["last_ns"], data["events"]),
        )
        _insert(conn, f"{schema}procs", name, data)


def drop_segment(conn: sqlite3.Connection, name: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM procs WHERE seg = ?", (name,))
        conn.execute("DELETE FROM segments WHERE name = ?", (name,))


@dataclass(slots=True)
class ProcRow:
    """What the index knows of one process image, over all segments."""

    exec_id: str
    pid: int
    parent_exec_id: str | None
    binary: str
    start_ns: int
    first_ns: int
    last_ns: int
    namespace: str | None
    pod: str | None
    bits: int
    # (position in LogIndex.segments, the row's bits in that segment)
    segments: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class SegmentInfo:
    segment: Segment
    first_ns: int
    last_ns: int
    events: int


@functools.lru_cache(maxsize=64)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _search(pattern: str, text: str | None) -> bool:
    return text is not None and _regex(pattern).search(text) is not None


class LogIndex:
    """Queries over the rows of a set of segments (directories and single files)."""

    def __init__(self, segments: list[Segment], problems: Problems) -> None:
        self.segments: list[SegmentInfo] = []
        self._pos: dict[tuple[int, str], int] = {}
        conn = sqlite3.connect("file::memory:", uri=True, timeout=30, isolation_level=None)
        conn.create_function("search", 2, _search, deterministic=True)
        conn.execute(f"CREATE TABLE scanned ({_COLUMNS})")
        self._conn = conn
        self._known: dict[int, dict[str, int]] = {}
        dirs: dict[Path, int] = {}
        views = ["SELECT -1 AS src, * FROM scanned"]
        for seg in segments:
            parent = seg.path.parent
            src = -1
            if seg.seq and parent not in dirs:  # a log directory's segment
                src = dirs[parent] = len(dirs)
                views += self._attach(src, parent)
            elif seg.seq:
                src = dirs[parent]
            self._add(src, seg, problems)
        conn.execute(f"CREATE TEMP VIEW procs_all AS {' UNION ALL '.join(views)}")

    def _attach(self, src: int, directory: Path) -> list[str]:
        """The directory's tables: `d{src}` in memory for what this reader adds, and
        the directory's database read-only as `r{src}` when it may be used. Their parts
        of the procs_all view."""
        self._conn.execute(f"ATTACH DATABASE ':memory:' AS d{src}")
        self._conn.executescript(_SCHEMA.replace("EXISTS ", f"EXISTS d{src}."))
        self._known[src] = {}
        views = [f"SELECT {src} AS src, * FROM d{src}.procs"]
        uri = readonly_uri(directory / DB_NAME)
        if uri is None:
            return views
        try:
            self._conn.execute(f"ATTACH DATABASE ? AS r{src}", (uri,))
            self._known[src] = dict(
                self._conn.execute(f"SELECT name, sidecar_bytes FROM r{src}.segments")
            )
        except sqlite3.Error:  # not ours after all, or a crash's hot journal: without it
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"DETACH DATABASE r{src}")
            return views
        # A segment this reader re-added (its sidecar changed) is in d, not r.
        return [
            *views,
            f"SELECT {src} AS src, * FROM r{src}.procs "
            f"WHERE seg NOT IN (SELECT name FROM d{src}.segments)",
        ]

    def _add(self, src: int, seg: Segment, problems: Problems) -> None:
        name = seg.plain_name
        if src >= 0:
            try:
                size = seg.sidecar.stat().st_size
            except OSError:
                size = -1
            if size >= 0 and self._known[src].get(name) == size:
                first, last, n = self._conn.execute(
                    f"SELECT first_ns, last_ns, events FROM r{src}.segments WHERE name = ?",
                    (name,),
                ).fetchone()
                self._register(src, name, seg, first, last, n)
                return
            data = load_sidecar(seg, problems) if size >= 0 else None
            if data is not None:
                add_segment(self._conn, name, size, data, f"d{src}.")
                self._register(src, name, seg, data["first_ns"], data["last_ns"], data["events"])
                return
        # No index: the open segment, a crash's leftover, a plain file.
        b = scan(seg, problems)
        key = f"{src}:{seg.path}"
        _insert(self._conn, "scanned", key, {"processes": b.rows})
        self._register(-1, key, seg, b.first_ns, b.last_ns, b.events)

    def _register(self, src: int, name: str, seg: Segment, first: int, last: int, n: int) -> None:
        self._pos[(src, name)] = len(self.segments)
        self.segments.append(SegmentInfo(seg, first, last, n))

    # -- queries ----------------------------------------------------------------

    def rows(self, where: str, params: Sequence[Any] = ()) -> dict[str, ProcRow]:
        """Processes with a row matching `where`, each with all of its rows' segments."""
        out: dict[str, ProcRow] = {}
        q = f"SELECT src, {_COLUMNS} FROM procs_all WHERE {where}"
        for src, seg, e, pid, parent, binary, start, first, last, ns, pod, bits in (
            self._conn.execute(q, params)
        ):
            pos = self._pos.get((src, seg))
            if pos is None:  # a segment that is gone (expired) or not asked for
                continue
            p = out.get(e)
            if p is None:
                out[e] = ProcRow(e, pid, parent, binary, start, first, last, ns, pod, bits,
                                 [(pos, bits)])
            else:
                p.first_ns = min(p.first_ns, first)
                p.last_ns = max(p.last_ns, last)
                p.bits |= bits
                p.segments.append((pos, bits))
        return out

    def by_exec_ids(self, ids: Iterable[str]) -> dict[str, ProcRow]:
        ids = list(ids)
        return self.rows(f"exec_id IN ({','.join('?' * len(ids))})", ids) if ids else {}

    def by_pids(self, pids: Iterable[int]) -> dict[str, ProcRow]:
        pids = list(pids)
        return self.rows(f"pid IN ({','.join('?' * len(pids))})", pids) if pids else {}

    def children(self, parents: Iterable[str]) -> dict[str, ProcRow]:
        ps = list(parents)
        return self.rows(f"parent IN ({','.join('?' * len(ps))})", ps) if ps else {}

    def matching(
        self,
        exec_ids: list[str],
        pids: list[int],
        pods: list[tuple[str, str]],
        binaries: list[str],
        since: int | None,
        until: int | None,
    ) -> dict[str, ProcRow]:
        """Processes with a row that matches every given criterion."""
        where: list[str] = []
        params: list[Any] = []
        if exec_ids:
            where.append(f"exec_id IN ({','.join('?' * len(exec_ids))})")
            params += exec_ids
        if pids:
            where.append(f"pid IN ({','.join('?' * len(pids))})")
            params += pids
        if pods:
            where.append("(" + " OR ".join("(namespace = ? AND pod = ?)" for _ in pods) + ")")
            params += [x for p in pods for x in p]
        if binaries:
            where.append("(" + " OR ".join("search(?, binary)" for _ in binaries) + ")")
            params += binaries
        if since is not None:
            where.append("last_ns >= ?")
            params.append(since)
        if until is not None:
            where.append("first_ns <= ?")
            params.append(until)
        hits = self.rows(" AND ".join(where) or "1", params)
        # The criteria picked processes; their rows in other segments count too.
        return self.by_exec_ids(hits) if hits else {}
