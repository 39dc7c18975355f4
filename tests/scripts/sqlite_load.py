#!/usr/bin/env python3
"""SQLite load for the crash loop: commits single-row transactions until killed, and after each
COMMIT returns appends the row's id to a log file outside the volume.

Usage: sqlite_load.py DB LOG wal|delete
  wal:    journal_mode=WAL, synchronous=FULL
  delete: journal_mode=DELETE, synchronous=EXTRA (FULL does not sync the directory after deleting
          the journal, so its last commit may roll back after a crash on any disk)
"""
import sqlite3
import sys


def main():
    path, log, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    if mode == "wal":
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    else:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA synchronous=EXTRA")
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    (last,) = db.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()
    out = open(log, "a")
    i = last + 1
    while True:
        db.execute("BEGIN")
        db.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, "row-%d-" % i + "x" * 200))
        db.execute("COMMIT")
        out.write("%d\n" % i)
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
