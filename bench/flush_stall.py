#!/usr/bin/env python3
"""Flush stall: does one client's FLUSH on a slow disk hold up the others?

A slow disk is modelled by an LD_PRELOAD shim (tests/tools/slowsync.c) that
makes every fsync and fdatasync of the server sleep --sync-ms first (no device-mapper here for
dm-delay). Two clients (fio, ioengine=nbd) write 4 KiB and FLUSH after each
write on their own overlays while a third reads 4 KiB at queue depth one from
its own; the bystander's IOPS and latency say whether the flushes block
the daemon's runtime. With --compare OTHER_BINARY both builds run, interleaved
round by round, and the ratio is printed.

Usage: cargo build --release && bench/flush_stall.py [--sync-ms 30] [--rounds 3] [--compare OLD_PXEROOT]
Needs fio (ioengine=nbd) and a C compiler.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = 10899
SHIM = os.path.join(ROOT, "tests", "tools", "slowsync.c")


def fio(mac, rw, seconds, extra):
    return subprocess.Popen(["fio", "--name=" + rw, "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{PORT}/{mac}", "--rw=" + rw,
                             "--bs=4k", "--iodepth=1", "--size=64M", f"--runtime={seconds}", "--time_based",
                             "--output-format=json"] + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def result(p, side):
    out = p.communicate()[0]
    return json.loads(out[out.index("{"):])["jobs"][0][side]


def one_run(binary, work, shim, sync_ms):
    state = tempfile.mkdtemp(dir=work)
    env = dict(os.environ, LD_PRELOAD=shim, SLOW_SYNC_MS=str(sync_ms))
    srv = subprocess.Popen([binary, "--log", "warn", "nbd", "--base", os.path.join(work, "base.img"), "--state-dir", state,
                            "--listen", f"127.0.0.1:{PORT}", "--policy", "persistent"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        flushers = [fio(f"52:54:00:00:00:0{c}", "randwrite", 8, ["--fsync=1"]) for c in "ab"]
        time.sleep(1)
        probe = result(fio("52:54:00:00:00:0c", "randread", 5, []), "read")
        flushes = [result(f, "write")["iops"] for f in flushers]
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(state, ignore_errors=True)
    c = probe["clat_ns"]
    return {"iops": probe["iops"], "p99_ms": c["percentile"]["99.000000"] / 1e6, "max_ms": c["max"] / 1e6,
            "flushes": sum(flushes)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.path.join(ROOT, "target", "release", "pxeroot"))
    ap.add_argument("--compare", help="another pxeroot binary (e.g. an older build) to run interleaved")
    ap.add_argument("--sync-ms", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ["fio", "cc"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing")
    work = tempfile.mkdtemp(prefix="pxeroot-flush-stall-")
    try:
        shim = os.path.join(work, "slowsync.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", shim, SHIM, "-ldl"], check=True)
        with open(os.path.join(work, "base.img"), "wb") as f:
            f.truncate(256 << 20)
        builds = {"this build": args.server} | ({"compared": args.compare} if args.compare else {})
        runs = {name: [] for name in builds}
        for rnd in range(args.rounds):
            for name, binary in (list(builds.items()) if rnd % 2 == 0 else list(reversed(builds.items()))):
                r = one_run(binary, work, shim, args.sync_ms)
                runs[name].append(r)
                print(f"round {rnd + 1}/{args.rounds} {name:10}: bystander {r['iops']:8.0f} reads/s, p99 {r['p99_ms']:6.2f} ms, "
                      f"max {r['max_ms']:6.1f} ms; flushers {r['flushes']:.1f} write+flush/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedians, fsync/fdatasync slowed by {args.sync_ms} ms:")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
    for n, m in med.items():
        print(f"  {n:10}: bystander {m['iops']:8.0f} reads/s, p99 {m['p99_ms']:6.2f} ms, max {m['max_ms']:6.1f} ms; "
              f"flushers {m['flushes']:.1f} write+flush/s")
    if args.compare:
        print(f"  bystander reads/s, this build / compared: {med['this build']['iops'] / med['compared']['iops']:.1f}x")


if __name__ == "__main__":
    main()
