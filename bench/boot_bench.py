#!/usr/bin/env python3
"""Boot benchmark, pxeroot's side: PXE boots of diskless QEMU clients (TCG),
1, 2 and 3 at once, timed per stage from the serial console, with the
server's CPU time per boot. The reference stack (dnsmasq + nbdkit + a
busybox/nbd-client initramfs) is not in this harness yet.

Stages (seconds from QEMU start, host clock): iPXE ready ("Press Ctrl-B for
the iPXE command line"), network configured (iPXE "Configuring ... ok"),
kernel + initrd loaded (last "... ok" of the HTTP fetches), /init started
(pxeroot-init's first line), root mounted ("switching root"), root's marker.

Usage (as root, after tests/run-all or ./demo fetched the guest kernel and
built the static init): bench/boot_bench.py [--rounds N] [--clients 1,2,3]
"""

import argparse
import atexit
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PXEROOT = os.path.join(ROOT, "target", "release", "pxeroot")
KERNEL = os.path.join(ROOT, "target", "guest-kernel")
TAG = f"pxboot{os.getpid()}"
LAN, SRV = f"{TAG}l", f"{TAG}s"
STAGES = [
    ("ipxe_ready", "Press Ctrl-B for the iPXE command line"),
    ("net_configured", "Configuring (net0"),
    ("kernel_initrd_loaded", "initrd.zst... ok"),
    ("init_started", "pxeroot-init ["),
    ("root_mounted", "switching root"),
    ("root_marker", "PXEROOT-MARKER root init running"),
]


def sh(*cmd, ns=None):
    subprocess.run((["ip", "netns", "exec", ns] if ns else []) + list(cmd), check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def boot_one(mac, tap, out):
    t0 = time.time()
    p = subprocess.Popen(["timeout", "120", "ip", "netns", "exec", LAN, "qemu-system-x86_64", "-accel", "tcg",
                          "-machine", "pc,graphics=off", "-m", "256", "-smp", "1", "-nodefaults", "-vga", "none",
                          "-display", "none", "-no-reboot", "-serial", "stdio", "-boot", "order=n",
                          "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                          "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                         errors="replace")
    times = {}
    for line in p.stdout:
        for name, needle in STAGES:
            if name not in times and needle in line:
                times[name] = time.time() - t0
    p.wait()
    times["power_off"] = time.time() - t0
    out[mac] = times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,2,3")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces and taps)")
    init = next((p for p in [os.path.join(ROOT, "target/x86_64-unknown-linux-musl/init/pxeroot-init"),
                             os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/init/pxeroot-init")] if os.path.exists(p)), None)
    if not (os.path.exists(PXEROOT) and init and os.path.exists(os.path.join(KERNEL, "ready"))):
        sys.exit("run tests/run-all (or ./demo) once, then cargo build --release")
    counts = [int(c) for c in args.clients.split(",")]
    work = tempfile.mkdtemp(prefix="pxeroot-boot-bench-")
    procs = []

    def cleanup():
        for p in procs:
            p.kill()
            p.wait()
        for ns in (LAN, SRV):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    atexit.register(cleanup)

    boot = os.path.join(work, "boot")
    os.makedirs(boot)
    shutil.copy(os.path.join(KERNEL, "vmlinuz"), boot)
    subprocess.run([PXEROOT, "initramfs", "--kernel-modules", os.path.join(KERNEL, "modules"), "-o",
                    os.path.join(boot, "initrd.zst"), "--init", init], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([os.path.join(ROOT, "images/build-test-root"), os.path.join(work, "root.img"), init],
                   check=True, stdout=subprocess.DEVNULL)
    initrd_size = os.path.getsize(os.path.join(boot, "initrd.zst"))

    for ns in (LAN, SRV):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=LAN)
    sh("ip", "link", "set", "br0", "up", ns=LAN)
    for i in range(max(counts)):
        sh("ip", "tuntap", "add", "dev", f"tap{i}", "mode", "tap", ns=LAN)
        sh("ip", "link", "set", f"tap{i}", "master", "br0", ns=LAN)
        sh("ip", "link", "set", f"tap{i}", "up", ns=LAN)
    sh("ip", "link", "add", "vlan0", "type", "veth", "peer", "name", "vsrv0", "netns", SRV, ns=LAN)
    sh("ip", "link", "set", "vlan0", "master", "br0", ns=LAN)
    sh("ip", "link", "set", "vlan0", "up", ns=LAN)
    sh("ip", "addr", "add", "10.99.0.1/24", "dev", "vsrv0", ns=SRV)
    sh("ip", "link", "set", "vsrv0", "up", ns=SRV)
    with open(os.path.join(work, "pxeroot.toml"), "w") as f:
        f.write('state_dir = "state"\n[nbd]\nlisten = ["10.99.0.1:10809"]\n[pxe]\nserver_address = "10.99.0.1"\n'
                'boot_dir = "boot"\n[dhcp]\nmode = "full"\ninterface = "vsrv0"\npool_start = "10.99.0.100"\n'
                'pool_end = "10.99.0.199"\nipv6_router_advertisements = true\n[images.root]\npath = "root.img"\n'
                'kernel = "vmlinuz"\ninitrd = "initrd.zst"\ncmdline = "console=ttyS0 panic=-1 quiet"\n'
                '[unknown_clients]\naction = "boot"\nimage = "root"\npolicy = "ephemeral"\n')
    server = subprocess.Popen(["ip", "netns", "exec", SRV, PXEROOT, "--log", "warn", "serve", "--config",
                               os.path.join(work, "pxeroot.toml")], cwd=work)
    procs.append(server)
    time.sleep(1)
    # `ip netns exec` execs pxeroot: the pid is the server's.
    results = {n: [] for n in counts}
    cpu = []
    for rnd in range(args.rounds):
        for n in counts:
            before = cpu_seconds(server.pid)
            out = {}
            threads = [threading.Thread(target=boot_one, args=(f"52:54:00:be:{rnd:02x}:{i:02x}", f"tap{i}", out))
                       for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            cpu.append((cpu_seconds(server.pid) - before) / n)
            results[n].append(out)
            worst = max(v["power_off"] for v in out.values())
            print(f"round {rnd + 1}/{args.rounds}: {n} client(s) done in {worst:.1f} s", flush=True)

    print(f"\ninitramfs {initrd_size} bytes; server CPU per boot: median {statistics.median(cpu):.3f} s")
    names = [s for s, _ in STAGES] + ["power_off"]
    print(f"{'clients':8}" + "".join(f"{s:>22}" for s in names))
    for n in counts:
        row = []
        for s in names:
            vals = [b[s] for r in results[n] for b in r.values() if s in b]
            row.append(f"{statistics.median(vals):22.2f}" if vals else f"{'-':>22}")
        print(f"{n:<8}" + "".join(row))


if __name__ == "__main__":
    main()
