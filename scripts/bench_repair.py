#!/usr/bin/env python3
"""The body of scripts/bench-repair.sh (see there): a nine-node cluster on loopback addresses,
a volume with data in every PG, SQLite on ext4 on its first 4 GiB, one node killed for good.

Figures:
- copy rate: bytes the nodes fetched from their peers (gap-fill records and hydrated pages,
  from their metrics) between the first membership change and fully healthy, per second; per
  PG stream it is that divided by the PGs repaired at once;
- time to healthy: from the kill (the nodes wait --repair-after first) and from the repair's
  first step;
- SQLite commits/s during the repair, and over BASE_WINDOW seconds just before the kill.
Baseline, same run: sequential fsync'd writes of the same bytes to a local file, and SQLite on a
local file.
"""
import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

AZS = ["a", "b", "c"]
PG_MIB = 10 * 1024
FS_GIB = 4
REPAIR_AFTER = "2s"
# Seconds SQLite's rate is measured without a repair, just before the kill.
BASE_WINDOW = 10


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


class Cluster:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.nodes = []  # (addr, metrics, az, process)
        self.mount = None

    def start(self):
        toml = ""
        for i in range(9):
            ip = "127.0.0.%d" % (60 + i)
            addr, metrics = "%s:7100" % ip, "%s:7101" % ip
            az = AZS[i // 3]
            toml += '[[node]]\naddr = "%s"\naz = "%s"\n\n' % (addr, az)
            self.nodes.append([addr, metrics, az, None, i])
        self.cluster = os.path.join(self.work, "cluster.toml")
        with open(self.cluster, "w") as f:
            f.write(toml)
        for node in self.nodes:
            self.start_node(node)
        self.mnt = os.path.join(self.work, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        log = open(os.path.join(self.work, "mount.log"), "w")
        self.mount = subprocess.Popen(
            [self.args.bin, "mount", "--cluster", self.cluster, "--volume", "bench",
             "--size", "%dG" % (self.args.pgs * 10), self.mnt],
            stdout=log, stderr=log)
        volume = os.path.join(self.mnt, "volume")
        for _ in range(600):
            if os.path.exists(volume):
                return volume
            time.sleep(0.1)
        raise SystemExit("the mount did not come up; see %s/mount.log" % self.work)

    def start_node(self, node):
        addr, metrics, az, _, i = node
        args = [self.args.bin, "node", "--listen", addr, "--az", az,
                "--data", os.path.join(self.work, "node%d" % i),
                "--metrics-listen", metrics, "--repair-after", REPAIR_AFTER]
        if self.args.bandwidth is not None:
            args += ["--repair-bandwidth", self.args.bandwidth]
        log = open(os.path.join(self.work, "node%d.log" % i), "w")
        node[3] = subprocess.Popen(args, stdout=log, stderr=log)

    def status(self):
        out = subprocess.run([self.args.bin, "status", "--json", "--volume", "bench",
                              "--cluster", self.cluster, "--wait", "5s"],
                             capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def fetched_bytes(self):
        total = 0
        for addr, metrics, _, process, _ in self.nodes:
            if process is None or process.poll() is not None:
                continue
            try:
                text = urllib.request.urlopen("http://%s/metrics" % metrics, timeout=3).read()
            except OSError:
                continue
            for line in text.decode().splitlines():
                series, _, value = line.rpartition(" ")
                name = series.split("{")[0]
                if name in ("sixfold_node_gap_fill_bytes", "sixfold_node_hydrated_bytes"):
                    total += int(float(value))
        return total

    def stop(self):
        if self.mount is not None and self.mount.poll() is None:
            subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True)
            try:
                self.mount.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.mount.kill()
        for node in self.nodes:
            if node[3] is not None and node[3].poll() is None:
                node[3].kill()
                node[3].wait()


def sqlite_load(db, log):
    return subprocess.Popen(["python3", os.path.join(os.path.dirname(__file__), "..", "tests",
                                                     "scripts", "sqlite_timed_load.py"), db, log],
                            stdin=subprocess.DEVNULL)


def commits_between(log, start, end):
    count = 0
    with open(log) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 2 and start * 1e6 <= int(fields[1]) < end * 1e6:
                count += 1
    return count


def local_baseline(work, mib):
    """Sequential fsync'd writes of the repair's bytes, and SQLite, on the local disk."""
    path = os.path.join(work, "local-copy")
    chunk = os.urandom(1 << 20)
    started = time.time()
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    copy_rate = mib / (time.time() - started)
    os.unlink(path)
    log = os.path.join(work, "local-commits.log")
    db = os.path.join(work, "local.sqlite")
    load = sqlite_load(db, log)
    time.sleep(2)
    start = time.time()
    time.sleep(6)
    end = time.time()
    load.kill()
    load.wait()
    return copy_rate, commits_between(log, start, end) / (end - start)


def main():
    # The benchmark measures copying, not TLS: every process it starts (nodes, mount, status)
    # runs plaintext, which `sixfold` requires be said explicitly since mutual TLS is the default.
    os.environ["SIXFOLD_INSECURE"] = "1"
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--pgs", type=int, default=4)
    parser.add_argument("--bandwidth")
    args = parser.parse_args()
    subprocess.run(["umount", "-l", os.path.join(args.work, "fs")], capture_output=True)
    subprocess.run(["fusermount3", "-u", os.path.join(args.work, "mnt")], capture_output=True)
    subprocess.run(["rm", "-rf", args.work], check=True)
    os.makedirs(args.work)
    local_copy, local_sqlite = local_baseline(args.work, args.mib * args.pgs)

    cluster = Cluster(args)
    fs = os.path.join(args.work, "fs")
    try:
        volume = cluster.start()
        print("writing %d MiB in each of %d PGs..." % (args.mib, args.pgs), flush=True)
        chunk = os.urandom(1 << 20)
        fd = os.open(volume, os.O_WRONLY)
        for pg in range(args.pgs):
            base = (pg * PG_MIB + FS_GIB * 1024 + 64) << 20
            for i in range(args.mib):
                os.pwrite(fd, chunk, base + (i << 20))
        os.fsync(fd)
        os.close(fd)
        sh("mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
           volume, "%dG" % FS_GIB)
        os.makedirs(fs, exist_ok=True)
        sh("mount", "-o", "loop,noinit_itable", volume, fs)
        log = os.path.join(args.work, "commits.log")
        load = sqlite_load(os.path.join(fs, "db.sqlite"), log)
        # Past the WAL's first checkpoints (its steady state), then a window without repair.
        time.sleep(5)
        base_from = time.time()
        time.sleep(BASE_WINDOW)
        base_to = time.time()

        status = cluster.status()
        held = {}
        for pg in status["pgs"]:
            for segment in pg["segments"]:
                held.setdefault(segment["node"], []).append(pg["pg"])
        victim_addr = max(held, key=lambda a: len(held[a]))
        victim = next(n for n in cluster.nodes if n[0] == victim_addr)
        repaired_pgs = len(held[victim_addr])
        fetched_before = cluster.fetched_bytes()
        killed = time.time()
        victim[3].send_signal(signal.SIGKILL)
        victim[3].wait()
        print("killed %s (AZ %s, %d PG(s)); waiting for the repair..." % (
            victim_addr, victim[2], repaired_pgs), flush=True)
        began = healed = None
        while time.time() - killed < 900:
            status = cluster.status()
            if status is not None:
                pgs = status["pgs"]
                if began is None and any(pg["changes"] for pg in pgs):
                    began = time.time()
                whole = all(
                    not pg["changes"] and len(pg["segments"]) == 6
                    and all(s["node"] != victim_addr and s["reachable"] for s in pg["segments"])
                    for pg in pgs)
                if began is not None and whole:
                    healed = time.time()
                    break
            time.sleep(0.2)
        if healed is None:
            raise SystemExit("not healed within 15 minutes; logs in %s" % args.work)
        fetched = cluster.fetched_bytes() - fetched_before
        copy = max(healed - began, 1e-3)
        during = commits_between(log, began, healed) / copy
        before = commits_between(log, base_from, base_to) / (base_to - base_from)
        load.kill()
        load.wait()
        total_rate = fetched / (1 << 20) / copy
        print()
        print("repair of %d PG(s), %d MiB written in each, bandwidth bound %s per node" % (
            repaired_pgs, args.mib, args.bandwidth or "default (256MiB)"))
        print("                                     sixfold         local disk")
        print("  copy rate, all streams        %8.1f MiB/s   %8.1f MiB/s (fsync'd writes)" % (
            total_rate, local_copy))
        print("  copy rate, per PG stream      %8.1f MiB/s" % (total_rate / max(repaired_pgs, 1)))
        print("  bytes copied                  %8.1f MiB" % (fetched / (1 << 20)))
        print("  time to healthy, from the kill %7.1f s   (--repair-after %s)" % (
            healed - killed, REPAIR_AFTER))
        print("  time to healthy, from 1st step %7.1f s" % copy)
        print("  SQLite commits/s without repair %6.0f         %8.0f" % (before, local_sqlite))
        print("  SQLite commits/s during repair  %6.0f   (ratio %.2f)" % (
            during, during / before if before else float("nan")))
    finally:
        subprocess.run(["umount", "-l", fs], capture_output=True)
        cluster.stop()


if __name__ == "__main__":
    main()
