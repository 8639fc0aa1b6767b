#!/usr/bin/env python3
"""NBD benchmark harness: pxeroot against qemu-nbd and nbdkit, side by side.

Serves one base image with
  - pxeroot   (`pxeroot nbd`, persistent qcow2 overlay per MAC),
  - qemu-nbd  (a qcow2 overlay backed by the base),
  - nbdkit    (`file` plugin + `--filter=cow`),
and runs the same fio jobs (ioengine=nbd) against each, interleaved round by
round so machine noise hits every server alike. Every write job starts on a
fresh, empty overlay. Prints IOPS or MiB/s (median over rounds) and the
pxeroot / best-peer ratio per job.

With --base compressed the base is a zlib-compressed qcow2 (as cloud images
ship) of half-random, half-zero 4 KiB blocks, and the peers are qemu-nbd
only (nbdkit's file plugin reads raw images).

With --compare DIR, the pxeroot build in DIR (DIR/pxeroot, e.g. an older
commit's target/release) runs too, as pxeroot-old, interleaved with the
others, and a last column prints pxeroot / pxeroot-old: a refactor's
regression check in one run.

Usage: bench/nbd_bench.py [--rounds N] [--runtime S] [--size-mib M] [--jobs a,b] [--base raw|compressed] [--compare DIR]
Needs: a release build (cargo build --release), fio, qemu-img, qemu-nbd, nbdkit.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PXEROOT = os.path.join(ROOT, "target", "release", "pxeroot")
MAC = "52:54:00:be:0c:01"

# name -> (fio rw, block size, iodepth, metric). Every job runs on a fresh,
# empty overlay (servers restart per run), so reads come from the base through
# the overlay, as a booting root disk's do, and writes allocate.
JOBS = {
    "randread-4k-qd1": ("randread", "4k", 1, "iops"),
    # A file read in small pieces: each compressed cluster 16 times.
    "seqread-4k-qd1": ("read", "4k", 1, "iops"),
    "randread-4k-qd32": ("randread", "4k", 32, "iops"),
    "randwrite-4k-qd32": ("randwrite", "4k", 32, "iops"),
    "seqread-1m-qd8": ("read", "1m", 8, "mibs"),
    "seqwrite-1m-qd8": ("write", "1m", 8, "mibs"),
    # Every write followed by a FLUSH (fio fsync=1): the durable path.
    "randwrite-4k-qd1-fsync": ("randwrite", "4k", 1, "iops"),
}
# Extra fio options per job.
JOB_OPTIONS = {"randwrite-4k-qd1-fsync": ["--fsync=1"]}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 20
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start listening")


class Server:
    """One peer: start() gives an NBD URI over a fresh overlay; stop() ends it."""

    def __init__(self, name, base, work, fmt, binary=PXEROOT):
        self.name, self.base, self.work, self.fmt, self.binary = name, base, work, fmt, binary
        self.proc = None

    def start(self):
        port = free_port()
        d = os.path.join(self.work, self.name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        log = open(os.path.join(d, "log"), "w")
        if self.name.startswith("pxeroot"):
            cmd = [self.binary, "--log", "warn", "nbd", "--base", self.base, "--state-dir", d,
                   "--listen", f"127.0.0.1:{port}"]
            uri = f"nbd://127.0.0.1:{port}/{MAC}"
        elif self.name == "qemu-nbd":
            ov = os.path.join(d, "overlay.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.fmt, "-b", self.base, ov],
                           check=True)
            cmd = ["qemu-nbd", "-f", "qcow2", "-x", "ov", "-b", "127.0.0.1", "-p", str(port), "-t",
                   "-e", "8", "--cache=writeback", "--aio=threads", ov]
            uri = f"nbd://127.0.0.1:{port}/ov"
        else:
            cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--filter=cow", "file", self.base]
            uri = f"nbd://127.0.0.1:{port}/"
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        wait_port(port, self.proc, self.name)
        return uri

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def run_fio(uri, job, runtime, size):
    rw, bs, qd, metric = JOBS[job]
    cmd = ["fio", "--name=" + job, "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs,
           f"--iodepth={qd}", f"--size={size}", f"--runtime={runtime}", "--time_based",
           "--ramp_time=1", "--randrepeat=0", "--norandommap", "--output-format=json"] + JOB_OPTIONS.get(job, [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"fio failed on {uri}:\n{out.stderr}")
    j = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    side = j["write"] if "write" in rw else j["read"]
    return side["iops"] if metric == "iops" else side["bw_bytes"] / (1 << 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=5, help="seconds per fio run")
    ap.add_argument("--size-mib", type=int, default=1024, help="base image size")
    ap.add_argument("--jobs", default=",".join(j for j in JOBS if j != "seqread-4k-qd1"))
    ap.add_argument("--base", choices=["raw", "compressed"], default="raw")
    ap.add_argument("--compare", metavar="DIR", help="also run DIR/pxeroot as pxeroot-old and print pxeroot / pxeroot-old")
    args = ap.parse_args()
    old = os.path.join(args.compare, "pxeroot") if args.compare else None
    if old and not os.path.exists(old):
        sys.exit(f"--compare: no {old}")
    jobs = args.jobs.split(",")
    for tool in ["fio", "qemu-img", "qemu-nbd", "nbdkit"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run tests/run-all once (it installs the peers)")
    if not os.path.exists(PXEROOT):
        sys.exit("build first: cargo build --release")

    work = tempfile.mkdtemp(prefix="pxeroot-bench-")
    base = os.path.join(work, "base.raw")
    size = args.size_mib << 20
    print(f"base: {args.size_mib} MiB of random data in {work} ({args.base})", flush=True)
    with open(base, "wb") as f:
        for _ in range(args.size_mib):
            if args.base == "raw":
                f.write(os.urandom(1 << 20))
            else:
                f.write(b"".join(os.urandom(2048) + bytes(2048) for _ in range(256)))
    fmt, names = "raw", ["pxeroot", "qemu-nbd", "nbdkit"]
    if args.base == "compressed":
        compressed = os.path.join(work, "base.qcow2")
        subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", base, compressed], check=True)
        os.unlink(base)
        base, fmt, names = compressed, "qcow2", ["pxeroot", "qemu-nbd"]
    servers = [Server(n, base, work, fmt) for n in names]
    if old:
        names.append("pxeroot-old")
        servers.append(Server("pxeroot-old", base, work, fmt, old))
    results = {job: {s.name: [] for s in servers} for job in jobs}
    try:
        for rnd in range(args.rounds):
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for job in jobs:
                for s in order:
                    uri = s.start()
                    v = run_fio(uri, job, args.runtime, size)
                    s.stop()
                    results[job][s.name].append(v)
                    unit = "IOPS" if JOBS[job][3] == "iops" else "MiB/s"
                    print(f"round {rnd + 1}/{args.rounds} {job:20} {s.name:11} {v:12.1f} {unit}", flush=True)
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'job':20} {'unit':6}" + "".join(f"{n:>12}" for n in names) + f" {'vs best peer':>13}"
          + (f" {'vs old':>8}" if old else ""))
    for job in jobs:
        med = {n: statistics.median(v) for n, v in results[job].items()}
        best = max(v for n, v in med.items() if not n.startswith("pxeroot"))
        unit = "IOPS" if JOBS[job][3] == "iops" else "MiB/s"
        print(f"{job:20} {unit:6}" + "".join(f"{med[n]:12.0f}" for n in names) + f" {med['pxeroot'] / best:12.2f}x"
              + (f" {med['pxeroot'] / med['pxeroot-old']:7.2f}x" if old else ""))


if __name__ == "__main__":
    main()
