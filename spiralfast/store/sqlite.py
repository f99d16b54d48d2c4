"""The one SQLite layer of the store: opening, pragmas, file mode 0600, the schema.

Both the node's event log (:mod:`spiralfast.store.sqlite_store`) and the old persistence
API (:mod:`spiralfast.persistence`) open their files here, so a file written by either
has the same tables, the same journal mode and the same private file mode, and one file
may be shared by both (and by several processes: WAL mode, a busy timeout):

- the old tables (:data:`SQLITE_SCHEMA`: ``agents``, ``ritual_events``,
  ``system_metrics``, ``configuration``), with the old column names, in every file;
- the event log's tables (:data:`EVENT_LOG_SCHEMA`: ``mesh_event_batches``, the
  ``delivery_cursor`` and the ``mesh_events`` view) in the event log's files.

An ``agents`` table of an earlier spiralfast release (column ``agent_type``) is migrated
to the old column names once, on open, with a log line.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

# The old API's logger: its messages (the agents migration) keep the name users filter on.
log = logging.getLogger("spiralfast.persistence")

#: The columns of ``agents``, in the old order (also :class:`AgentRecord`'s fields).
AGENT_COLUMNS = ("agent_id", "name", "type", "status", "recursion_depth", "entropy_level", "metadata",
                 "created_at", "updated_at")
#: Seconds a writer waits on a database another process holds locked (the node's
#: event log and a ``PersistenceManager`` may share one file).
BUSY_TIMEOUT_S = 10.0


_AGENTS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
        agent_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        recursion_depth INTEGER DEFAULT 0,
        entropy_level REAL DEFAULT 0.5,
        metadata TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )"""

#: The old table layouts (``CREATE ... IF NOT EXISTS``: an old file is used as is).
SQLITE_SCHEMA = (
    _AGENTS_TABLE.format(name="agents"),
    # event_id is not a PRIMARY KEY here: a unique index on it would cost a third
    # of the event log's write rate; ids are unique by construction (uuid4, or the
    # mesh's origin-prefixed ids).
    """CREATE TABLE IF NOT EXISTS ritual_events (
        event_id TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        event_type TEXT NOT NULL,
        description TEXT NOT NULL,
        agent_id TEXT,
        metadata TEXT,
        severity TEXT DEFAULT 'INFO'
    )""",
    "CREATE INDEX IF NOT EXISTS idx_ritual_events_timestamp ON ritual_events(timestamp)",
    """CREATE TABLE IF NOT EXISTS system_metrics (
        metric_id TEXT PRIMARY KEY,
        timestamp TEXT NOT NULL,
        metric_name TEXT NOT NULL,
        metric_value REAL NOT NULL,
        metadata TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS idx_system_metrics_timestamp ON system_metrics(timestamp)",
    """CREATE TABLE IF NOT EXISTS configuration (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        description TEXT,
        updated_at TEXT NOT NULL
    )""",
)

#: The event log's tables, on top of the old ones (see :mod:`spiralfast.store.sqlite_store`).
EVENT_LOG_SCHEMA = (
    # The event log proper: one row per batch, its events a JSON array of envelopes in
    # arrival order.  Writing a batch is one encode and one row, so a node persists
    # hundreds of thousands of events per second; queries skip batches by time range,
    # types and sources.
    """CREATE TABLE IF NOT EXISTS mesh_event_batches (
        batch_id INTEGER PRIMARY KEY,
        first_ts TEXT NOT NULL,
        last_ts TEXT NOT NULL,
        count INTEGER NOT NULL,
        types TEXT NOT NULL,
        sources TEXT NOT NULL,
        events TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idx_mesh_event_batches_last_ts ON mesh_event_batches(last_ts)",
    # The delivery cursor (spiralfast/store/cursor.py), written with the batches.
    """CREATE TABLE IF NOT EXISTS delivery_cursor (
        origin TEXT PRIMARY KEY,
        done INTEGER NOT NULL,
        ahead TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    # Every stored event as a row, for SQL tools.
    # Events are envelope objects, or wire-form arrays [event_id, event_type,
    # source_node, epoch seconds, data, target_node, ...] (what record_event() keeps).
    """CREATE VIEW IF NOT EXISTS mesh_events AS
        SELECT iif(e.type = 'array', e.value->>0, e.value->>'event_id') AS event_id,
               iif(e.type = 'array', strftime('%Y-%m-%dT%H:%M:%f', e.value->>3, 'unixepoch', 'localtime'),
                   e.value->>'timestamp') AS timestamp,
               iif(e.type = 'array', e.value->>1, e.value->>'type') AS event_type,
               iif(e.type = 'array', e.value->>2, e.value->>'source_node') AS source_node,
               iif(e.type = 'array', e.value->>5, e.value->>'target_node') AS target_node,
               iif(e.type = 'array', e.value->4, e.value->'data') AS data,
               b.batch_id AS batch_id
        FROM mesh_event_batches AS b, json_each(b.events) AS e""",
)

AGENT_COLS = ", ".join(AGENT_COLUMNS)


def private_file(path: str | Path) -> None:
    """Make the database file at ``path`` readable by its owner only (0600), creating it
    empty if it does not exist: events and state are nobody else's business.  SQLite
    gives its ``-wal`` and ``-shm`` files the database file's mode; those that exist
    already (and a file of an earlier release) are tightened too.  Files of another
    owner are left alone (chmod is refused), as are ``:memory:`` and special files."""
    p = Path(path)
    if str(p) == ":memory:":
        return
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
    except OSError:
        return  # not writable: sqlite3 says why when it opens it
    for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm"), Path(f"{p}-journal")):
        try:
            st = f.stat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
                os.chmod(f, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError:
            pass


def prepare_new_file(path: str | Path) -> None:
    """A new (missing or empty) file gets 8 KiB pages and incremental vacuum, settable
    only before its first table, so space freed later can be returned to the disk."""
    p = Path(path)
    if str(p) == ":memory:" or (p.exists() and p.stat().st_size > 0):
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    private_file(p)  # 0600, before SQLite creates it (and its -wal/-shm) world-readable
    pre = sqlite3.connect(str(p), isolation_level=None)
    try:
        pre.execute("PRAGMA page_size=8192")
        pre.execute("PRAGMA auto_vacuum=INCREMENTAL")
        pre.execute("PRAGMA journal_mode=WAL")  # writes the header: the settings stick
    finally:
        pre.close()


def open_sqlite(path: str | Path, *, event_log: bool = False, incremental_vacuum: bool = False) -> sqlite3.Connection:
    """Open (creating if needed, mode 0600: ``private_file``) a database file in WAL mode
    with the old tables.

    :param event_log: create the event log's tables too (:data:`EVENT_LOG_SCHEMA`).
    :param incremental_vacuum: a new file is created with incremental vacuum
        (:func:`prepare_new_file`; the event log does when it has a size cap).
    :raises sqlite3.Error: the file cannot be opened or written (read-only, full disk).
    :raises OSError: its directory cannot be created.
    """
    p = Path(path)
    if incremental_vacuum:
        prepare_new_file(p)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
        private_file(p)
    conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
            conn.execute("PRAGMA page_size=8192")  # fewer page writes per batch (new files only)
        conn.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL syncs at checkpoints only: a power cut may lose the last
        # commits, a crashed process (kill -9) loses nothing that was committed.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN")
        for stmt in SQLITE_SCHEMA:
            conn.execute(stmt)
        conn.execute("COMMIT")
        if _agents_need_migration(conn):
            _migrate_agents(conn, p)
        if event_log:
            conn.execute("BEGIN")
            for stmt in EVENT_LOG_SCHEMA:
                conn.execute(stmt)
            conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return conn


def open_reader(path: str | Path) -> sqlite3.Connection:
    """A read-only connection (queries on any thread; never creates the file).

    :raises sqlite3.Error: the file cannot be opened.
    """
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)


def checkpoint_file(path: str | Path) -> None:
    """Copy a file's write-ahead log into it and empty it (the last connection to close
    removes the ``-wal`` file).

    :raises sqlite3.Error: the file cannot be read.
    """
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()


def _agent_columns(conn: sqlite3.Connection) -> list[str]:
    return [str(r[1]) for r in conn.execute("PRAGMA table_info(agents)")]


def _agents_need_migration(conn: sqlite3.Connection) -> bool:
    cols = _agent_columns(conn)
    return "agent_type" in cols and "type" not in cols


def _migrate_agents(conn: sqlite3.Connection, path: Path) -> None:
    """Rebuild an ``agents`` table of an earlier spiralfast release (column
    ``agent_type``, ``metadata`` last) in the old layout, rows kept, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _agents_need_migration(conn):  # another process did it meanwhile
            conn.execute("COMMIT")
            return
        n = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
        conn.execute("DROP TABLE IF EXISTS agents_migrating")
        conn.execute(_AGENTS_TABLE.format(name="agents_migrating"))
        conn.execute(f"INSERT INTO agents_migrating ({AGENT_COLS}) SELECT agent_id, name, agent_type, status, "
                     "recursion_depth, entropy_level, metadata, created_at, updated_at FROM agents")
        conn.execute("DROP TABLE agents")
        conn.execute("ALTER TABLE agents_migrating RENAME TO agents")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.warning("persistence: %s: table agents migrated to the old column names (agent_type -> type), "
                "%d rows kept", path, n)


__all__ = [
    "AGENT_COLUMNS",
    "BUSY_TIMEOUT_S",
    "EVENT_LOG_SCHEMA",
    "SQLITE_SCHEMA",
    "checkpoint_file",
    "open_reader",
    "open_sqlite",
    "prepare_new_file",
    "private_file",
]
