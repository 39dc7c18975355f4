#!/usr/bin/env python3
"""SQLite commits per second: WAL, synchronous=FULL, one single-row INSERT per transaction.

Usage: sqlite_commit_rate.py DB_PATH SECONDS
Prints one line: "<commits> commits in <seconds> s = <rate> commits/s".
"""
import os
import sqlite3
import sys
import time


def main() -> None:
    path, seconds = sys.argv[1], float(sys.argv[2])
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode.lower() == "wal", mode
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    commits = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        db.execute("BEGIN")
        db.execute("INSERT INTO t(v) VALUES (?)", ("row-%d" % commits,))
        db.execute("COMMIT")
        commits += 1
    elapsed = time.monotonic() - started
    (count,) = db.execute("SELECT count(*) FROM t").fetchone()
    assert count == commits, (count, commits)
    db.close()
    print("%d commits in %.1f s = %.1f commits/s" % (commits, elapsed, commits / elapsed))


if __name__ == "__main__":
    main()
