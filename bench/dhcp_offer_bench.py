#!/usr/bin/env python3
"""Proxy offer latency: how long after a PXE DISCOVER the proxy offer
arrives, pxeroot against dnsmasq in proxy mode, same packets, interleaved.

Topology (as root, removed at exit): a LAN namespace with a bridge, the
client probe in its own namespace, and the proxy in a server namespace
joined by veth. The DISCOVER is the BIOS iPXE ROM's from the fixtures. The
time is measured at the client (tests/tools/dhcp_probe.py): it includes the
probe's own Python overhead, so it is an upper bound for both servers.

Usage: bench/dhcp_offer_bench.py [--rounds N]   (needs a release build, dnsmasq)
"""

import argparse
import atexit
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PXEROOT = os.path.join(ROOT, "target", "release", "pxeroot")
PROBE = os.path.join(ROOT, "tests", "tools", "dhcp_probe.py")
TAG = f"pxbench{os.getpid()}"
LAN, SRV, CLI = f"{TAG}l", f"{TAG}s", f"{TAG}c"


def sh(*cmd, ns=None):
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    subprocess.run(full, check=True, stdout=subprocess.DEVNULL)


def discover_from_fixture():
    data = open(os.path.join(ROOT, "tests/fixtures/dhcp/bios-ipxe-rom.pcap"), "rb").read()
    at = 24
    while at + 16 <= len(data):
        incl = struct.unpack("<I", data[at + 8:at + 12])[0]
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        if frame[12:14] == b"\x08\x00" and frame[23] == 17:
            udp = 14 + (frame[14] & 0x0F) * 4
            if struct.unpack(">H", frame[udp + 2:udp + 4])[0] == 67:
                p = bytearray(frame[udp + 8:])
                p[10] |= 0x80  # broadcast replies: the probe has another MAC
                return bytes(p)
    sys.exit("no DISCOVER in the fixture")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    work = tempfile.mkdtemp(prefix="pxeroot-dhcp-bench-")
    procs = []

    def cleanup():
        for p in procs:
            p.kill()
            p.wait()
        for ns in (LAN, SRV, CLI):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    atexit.register(cleanup)

    for ns in (LAN, SRV, CLI):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", "br0", "type", "bridge", ns=LAN)
    sh("ip", "link", "set", "br0", "up", ns=LAN)
    for peer_ns, inner, outer in ((SRV, "vsrv0", "vs"), (CLI, "vcli0", "vc")):
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", peer_ns, ns=LAN)
        sh("ip", "link", "set", outer, "master", "br0", ns=LAN)
        sh("ip", "link", "set", outer, "up", ns=LAN)
        sh("ip", "link", "set", inner, "up", ns=peer_ns)
    sh("ip", "addr", "add", "10.99.0.1/24", "dev", "vsrv0", ns=SRV)

    os.makedirs(os.path.join(work, "boot"))
    open(os.path.join(work, "base.img"), "wb").write(b"\0" * (1 << 20))
    open(os.path.join(work, "pxeroot.toml"), "w").write(
        'state_dir = "state"\n[nbd]\nlisten = ["10.99.0.1:10809"]\n[pxe]\nserver_address = "10.99.0.1"\nboot_dir = "boot"\n'
        '[http]\nenabled = false\n[dhcp]\nmode = "proxy"\ninterface = "vsrv0"\n'
        '[images.root]\npath = "base.img"\n[unknown_clients]\naction = "boot"\nimage = "root"\n')
    packet = os.path.join(work, "discover")
    open(packet, "wb").write(discover_from_fixture())
    servers = {
        "pxeroot": ["ip", "netns", "exec", SRV, PXEROOT, "--log", "warn", "serve", "--config", os.path.join(work, "pxeroot.toml")],
        "dnsmasq": ["ip", "netns", "exec", SRV, "dnsmasq", "--no-daemon", "--port=0", "--interface=vsrv0", "--bind-interfaces",
                    "--dhcp-range=10.99.0.0,proxy", "--pxe-service=X86PC,pxeroot,undionly.kpxe", "--dhcp-no-override",
                    f"--pid-file={work}/dnsmasq.pid", f"--dhcp-leasefile={work}/leases"],
    }
    results = {n: [] for n in servers}
    for rnd in range(args.rounds):
        for name in (list(servers) if rnd % 2 == 0 else list(reversed(list(servers)))):
            p = subprocess.Popen(servers[name], cwd=work, stderr=subprocess.DEVNULL)
            procs.append(p)
            time.sleep(0.4)
            out = subprocess.run(["ip", "netns", "exec", CLI, "python3", PROBE, "vcli0", packet, "1"],
                                 capture_output=True, text=True).stdout
            offers = [json.loads(l) for l in out.splitlines() if l.strip()]
            if offers:
                results[name].append(offers[0]["ms"])
            p.kill()
            p.wait()
            procs.remove(p)
    print(f"{'server':10} {'offers':>7} {'median ms':>10} {'p90 ms':>8}")
    for name, v in results.items():
        if not v:
            print(f"{name:10} {'0':>7}")
            continue
        v.sort()
        print(f"{name:10} {len(v):>7} {statistics.median(v):10.3f} {v[int(len(v) * 0.9)]:8.3f}")


if __name__ == "__main__":
    main()
