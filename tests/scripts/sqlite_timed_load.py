#!/usr/bin/env python3
"""SQLite load for the snapshot test: single-row transactions (WAL, synchronous=FULL) until
killed; after each COMMIT returns it appends "id unix_micros" to a log file outside the volume.

Usage: sqlite_timed_load.py DB LOG
"""
import sqlite3
import sys
import time


def main():
    path, log = sys.argv[1], sys.argv[2]
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    out = open(log, "a")
    i = 1
    while True:
        db.execute("BEGIN")
        db.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, "row-%d-" % i + "x" * 200))
        db.execute("COMMIT")
        out.write("%d %d\n" % (i, int(time.time() * 1_000_000)))
        out.flush()
        i += 1


if __name__ == "__main__":
    main()
