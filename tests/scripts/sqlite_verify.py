#!/usr/bin/env python3
"""Checks a database after a crash: PRAGMA integrity_check is ok and every id the load recorded as
committed is present. Prints what it found; exits non-zero on any problem.

Usage: sqlite_verify.py DB LOG   (LOG: one committed id per line, optionally followed by a time)
"""
import os
import sqlite3
import sys


def main():
    path, log = sys.argv[1], sys.argv[2]
    recorded = set()
    if os.path.exists(log):
        with open(log) as f:
            recorded = {int(line.split()[0]) for line in f if line.strip()}
    if not os.path.exists(path):
        if recorded:
            print("%s is missing but %d commits were recorded" % (path, len(recorded)))
            sys.exit(1)
        print("%s: not created yet" % path)
        return
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    (check,) = db.execute("PRAGMA integrity_check").fetchone()
    if check != "ok":
        print("%s: integrity_check: %s" % (path, check))
        sys.exit(1)
    present = {row[0] for row in db.execute("SELECT id FROM t")}
    missing = sorted(recorded - present)
    if missing:
        print("%s: %d recorded commits missing, first %s" % (path, len(missing), missing[:10]))
        sys.exit(1)
    print("%s: ok, %d rows, all %d recorded commits present" % (path, len(present), len(recorded)))


if __name__ == "__main__":
    main()
