#!/usr/bin/env python3
"""SQLite commits per second: WAL, synchronous=FULL, one single-row INSERT per transaction.

Usage: sqlite_commit_rate.py DB_PATH SECONDS [--warmup N] [--hook CMD]
Prints one line: "<commits> commits in <seconds> s = <rate> commits/s".

The database starts empty. --warmup N commits N times first, untimed, in the same connection
(closing the last connection checkpoints and deletes the WAL, so a warm-up must not close it).
--hook CMD runs the shell command `CMD before` when the timed phase starts and `CMD after` when
it ends (a benchmark reads its counters there).

Why a warm-up: SQLite's WAL grows by one frame per commit until its first checkpoint (every
1000 pages) and is overwritten in place from then on. While it grows, every fdatasync also
commits ext4's journal (the file's size and blocks change): two flushes of the device per commit
instead of one. A database that has been running a while is past that, so its steady state is
measured after a few checkpoint cycles. From an empty database the figure mixes the two phases,
in proportions that depend on the rate itself: a slower device spends more of a fixed time
growing its WAL.
"""
import argparse
import os
import sqlite3
import subprocess
import time


def commit(db: sqlite3.Connection, value: str) -> None:
    db.execute("BEGIN")
    db.execute("INSERT INTO t(v) VALUES (?)", (value,))
    db.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--warmup", type=int, default=0, metavar="N")
    parser.add_argument("--hook", metavar="CMD")
    args = parser.parse_args()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(args.path + suffix):
            os.remove(args.path + suffix)
    db = sqlite3.connect(args.path, isolation_level=None)
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    assert mode.lower() == "wal", mode
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    for i in range(args.warmup):
        commit(db, "warmup-%d" % i)
    if args.hook:
        subprocess.run(args.hook + " before", shell=True, check=True)
    commits = 0
    started = time.monotonic()
    deadline = started + args.seconds
    while time.monotonic() < deadline:
        commit(db, "row-%d" % commits)
        commits += 1
    elapsed = time.monotonic() - started
    if args.hook:
        subprocess.run(args.hook + " after", shell=True, check=True)
    (count,) = db.execute("SELECT count(*) FROM t").fetchone()
    assert count == args.warmup + commits, (count, args.warmup, commits)
    db.close()
    print("%d commits in %.1f s = %.1f commits/s" % (commits, elapsed, commits / max(elapsed, 1e-9)))


if __name__ == "__main__":
    main()
