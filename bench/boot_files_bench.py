#!/usr/bin/env python3
"""Boot-file transfer benchmark: pxeroot's TFTP and HTTP against their peers.

TFTP: pxeroot, tftpd-hpa (in.tftpd) and dnsmasq serve one directory on
loopback (each on its own 127.0.0.x:69); curl fetches with blksize 1468
(lock-step, like firmware) and atftp with blksize 1468 + windowsize 16.
HTTP: pxeroot against busybox httpd, with curl. Files: 8 MiB (a kernel) and
64 MiB. Rounds interleave the servers; medians and pxeroot/peer ratios are
printed.

Usage (as root; the servers bind port 69): bench/boot_files_bench.py [--rounds N]
Needs: cargo build --release, curl, atftp, tftpd-hpa, dnsmasq, busybox.
"""

import argparse
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
FILES = {"8MiB": 8 << 20, "64MiB": 64 << 20}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {r.stderr.decode()[:300]}")
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for tool in ["curl", "atftp", "in.tftpd", "dnsmasq", "busybox"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install curl atftp tftpd-hpa dnsmasq-base busybox-static)")
    if not os.path.exists(PXEROOT):
        sys.exit("build first: cargo build --release")

    work = tempfile.mkdtemp(prefix="pxeroot-tftp-bench-")
    boot = os.path.join(work, "boot")
    os.makedirs(boot)
    for name, size in FILES.items():
        with open(os.path.join(boot, name), "wb") as f:
            f.write(os.urandom(size))
    with open(os.path.join(work, "base.img"), "wb") as f:
        f.write(b"\0" * (1 << 20))
    http_port, nbd_port, bb_port = free_port(), free_port(), free_port()
    with open(os.path.join(work, "pxeroot.toml"), "w") as f:
        f.write(f'state_dir = "state"\n[nbd]\nlisten = ["127.0.0.1:{nbd_port}"]\n[pxe]\nserver_address = "127.0.0.1"\n'
                f'boot_dir = "boot"\n[tftp]\nlisten = "127.0.0.2:69"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
                f'[images.root]\npath = "base.img"\n')
    procs = [
        subprocess.Popen([PXEROOT, "--log", "warn", "serve", "--config", os.path.join(work, "pxeroot.toml")]),
        subprocess.Popen(["in.tftpd", "-L", "-s", boot, "-a", "127.0.0.3:69"]),
        subprocess.Popen(["dnsmasq", "--no-daemon", "--port=0", "--enable-tftp", f"--tftp-root={boot}",
                          "--listen-address=127.0.0.4", "--bind-interfaces", "--interface=lo",
                          f"--pid-file={work}/dnsmasq.pid"], stderr=subprocess.DEVNULL),
        subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{bb_port}", "-h", boot]),
    ]
    tftp = {"pxeroot": "127.0.0.2", "tftpd-hpa": "127.0.0.3", "dnsmasq": "127.0.0.4"}
    http = {"pxeroot": http_port, "busybox httpd": bb_port}
    out = os.path.join(work, "out")
    results = {}
    time.sleep(1)
    try:
        for rnd in range(args.rounds):
            for fname in FILES:
                for name, ip in list(tftp.items())[rnd % 3:] + list(tftp.items())[:rnd % 3]:
                    t = timed(["curl", "-s", "--tftp-blksize", "1468", "-o", out, f"tftp://{ip}/{fname}"])
                    results.setdefault(("tftp curl blksize 1468", fname), {}).setdefault(name, []).append(t)
                    t = timed(["atftp", "--option", "blksize 1468", "--option", "windowsize 16", "-g", "-r", fname, "-l", out, ip])
                    results.setdefault(("tftp atftp windowsize 16", fname), {}).setdefault(name, []).append(t)
                for name, port in list(http.items())[rnd % 2:] + list(http.items())[:rnd % 2]:
                    t = timed(["curl", "-s", "-o", out, f"http://127.0.0.1:{port}/{fname}"])
                    results.setdefault(("http curl", fname), {}).setdefault(name, []).append(t)
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'transfer':28} {'file':6} " + "".join(f"{n:>15}" for n in ["pxeroot", "peer 1", "peer 2"]) + "  pxeroot vs fastest peer")
    for (what, fname), by in results.items():
        med = {n: statistics.median(v) for n, v in by.items()}
        peers = {n: v for n, v in med.items() if n != "pxeroot"}
        best = min(peers.values())
        mbs = lambda s: FILES[fname] / s / (1 << 20)
        cells = [f"{mbs(med['pxeroot']):9.1f} MiB/s"] + [f"{n}: {mbs(v):.1f}" for n, v in peers.items()]
        print(f"{what:28} {fname:6} " + "  ".join(cells) + f"   {best / med['pxeroot']:.2f}x")


if __name__ == "__main__":
    main()
