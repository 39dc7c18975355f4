#!/usr/bin/env python3
"""Latency of one 4 KiB overwrite + fdatasync on this disk, by 1 writer and by 6 at once.

Usage: disk_flush_latency.py DIR
Six storage nodes on one machine flush one disk six times per quorum round, at the same
instant; this shows what that costs before any sixfold code runs. Prints one line.
"""
import os
import sys
import threading
import time

ROUNDS = 500


def flush_loop(path, out):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * (4096 * ROUNDS))
        os.fsync(fd)
        page = b"x" * 4096
        started = time.perf_counter()
        for i in range(ROUNDS):
            os.pwrite(fd, page, i * 4096)
            os.fdatasync(fd)
        out.append((time.perf_counter() - started) / ROUNDS * 1e6)
    finally:
        os.close(fd)
        os.unlink(path)


def mean_latency(directory, writers):
    out = []
    threads = [
        threading.Thread(target=flush_loop, args=(os.path.join(directory, "flush-%d" % i), out))
        for i in range(writers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(out) / len(out)


def main():
    directory = sys.argv[1]
    one = mean_latency(directory, 1)
    six = mean_latency(directory, 6)
    print("%.0f us with 1 writer, %.0f us each with 6 at once (%.1fx)" % (one, six, six / one))


if __name__ == "__main__":
    main()
