#!/usr/bin/env python3
"""Boot benchmark: diskless QEMU clients (TCG, SeaBIOS + QEMU's iPXE ROM,
virtio-net) PXE-boot from pxeroot and from a reference stack built from the
tools people use today, interleaved in one run, 1, 2 and 3 clients at once.

Stacks (--stacks, comma-separated; default "pxeroot,pxeroot-nics,pxeroot-lz4,reference,reference-zstd"):
  pxeroot         pxeroot in proxy mode beside the site's DHCP server; boot
                  files over HTTP, its static pxeroot-init in the initramfs
                  (its default zstd -19).
  reference       dnsmasq as proxy DHCP + TFTP beside the same site DHCP
                  server, qemu-storage-daemon exporting one qcow2 overlay per
                  client over the shared raw base (made before the boot: the
                  reference cannot make overlays on demand), and an initramfs
                  of busybox-static + Debian's nbd-client with its shared
                  libraries, gzip -9 (as ../shared/reference/boot-chain.md's
                  reference), whose /init (a busybox sh script) insmods 15
                  modules, runs udhcpc, nbd-client, mount and switch_root.
  reference-zstd  the same with the initramfs compressed by zstd -19.
  pxeroot-nics    the same, its initramfs built with the reference's NIC
                  drivers only (--nics virtio,e1000) instead of all six.
  pxeroot-lz4     pxeroot-nics with its initramfs compressed by LZ4
                  (--compress lz4): 1.5x the size, unpacked in half the time.
  pxeroot-full    pxeroot as the only DHCP server (full mode) with its IPv6
                  router advertisement, no site DHCP server.
  pxeroot-old     with --compare DIR: pxeroot's defaults from an older build
                  (DIR/pxeroot and its DIR/pxeroot-init), for a regression
                  check in the same run; ratios pxeroot / pxeroot-old last.
The "site" is a dnsmasq on the LAN bridge handing out addresses (no-ping)
and answering router solicitations (ra-only), so no stack pays iPXE's IPv6
wait. All stacks boot the same kernel and the same raw root image, whose
/sbin/init prints a marker, writes a file and powers off. The order of the
stacks alternates from one group of boots to the next.

Stages (host clock, from the serial console as bytes arrive):
  dhcp      end of iPXE's Ctrl-B wait -> "Configuring (net0 ...) ok"
  files     -> the initrd's "... o(k)" (script, kernel, initrd)
  kernel    -> /init's first line, less the unpack: XZ decompression of the
            bzImage and the kernel's own start, the same for every stack
  unpack    the kernel unpacking the initramfs, measured apart in direct
            kernel boots (its own printk timestamps, synchronous unpack)
  init      /init's start -> /dev/nbd0 attached: modules, network, NBD
            (pxeroot-init overlaps them; the /init table shows each)
  mount     -> the root's init started (mount, switch_root, exec): the
            busybox root's marker, or the Debian root's first unit
  root      -> the root's marker: 0 for the busybox root; systemd's start
            to multi-user for the Debian root (not an owned stage)
"owned" = dhcp + files + unpack + init + mount, the stages the boot server
and the initramfs own; "total" is QEMU start to the root's marker. Server
CPU is the boot server's processes (pxeroot; dnsmasq + qemu-storage-daemon),
not the site's DHCP server.

Roots (--root): "busybox" (default), images/build-test-root's image whose
/sbin/init prints the marker at once; "debian", a Debian systemd root from
images/build-debian-root (debootstrap, cached in target/bench-reference)
whose marker service runs once multi-user is reached: its "root" stage,
systemd's own start, reads hundreds of files over NBD.

Usage (as root, after tests/run-all or ./demo fetched the guest kernel and
built the static init; downloads Debian's nbd-client once with apt-get):
  cargo build --release && bench/boot_bench.py [--rounds N] [--clients 1,2,3] [--root debian] [--smp 2]
"""

import argparse
import atexit
import glob
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PXEROOT = os.path.join(ROOT, "target", "release", "pxeroot")
KERNEL = os.path.join(ROOT, "target", "guest-kernel")
REF_CACHE = os.path.join(ROOT, "target", "bench-reference")
TAG = f"pxb{os.getpid()}"
LAN, SRV = f"{TAG}l", f"{TAG}s"
SERVER_IP = "10.99.0.1"
BOOT_TIMEOUT_S = 150
POWEROFF_GRACE_S = 15
KEEP_CONSOLES = False
# The reference /init's modules, in dependency order (the reference stack has
# no modules.dep): virtio-net and e1000 NICs, nbd, ext4 with metadata_csum.
REF_MODULES = ["virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover",
               "net_failover", "virtio_net", "e1000", "nbd", "crc16", "mbcache", "crc32c_generic", "jbd2", "ext4"]
# Console landmarks: (name, pattern) in boot order; a stack's own /init
# patterns override the common ones.
COMMON = [
    ("ipxe_ready", r"Press Ctrl-B for the iPXE command line[^\n]*\n"),
    ("dhcp_done", r"Configuring \(net0[^\n]*ok"),
    ("files_loaded", r"initrd\S*\.\.\. o"),  # the "k" is sometimes lost when Linux resets the UART
    ("init_started", None),
    ("modules_loaded", None),
    ("network_up", None),
    ("nbd_attached", None),
    ("root_started", r"PXEROOT-MARKER (root init running|systemd started)"),
    ("root_marker", r"PXEROOT-MARKER (root init running|systemd root up)"),
]
INIT_PATTERNS = {
    "pxeroot": {"init_started": r"pxeroot-init \[", "modules_loaded": r"\] \d+ modules loaded", "network_up": r"configure \S+: ok",
                "nbd_attached": r"attach /dev/nbd0 \(\w+\): ok"},
    "reference": {"init_started": r"ref-init: start", "modules_loaded": r"ref-init: \d+ modules loaded", "network_up": r"ref-init: network up",
                  "nbd_attached": r"ref-init: nbd attached"},
}
# The reference's initramfs carries these NIC drivers; pxeroot-nics builds
# pxeroot's with the same (`pxeroot initramfs --nics`).
REF_NICS = "virtio,e1000"
# Each pxeroot stack's initramfs: file name, `pxeroot initramfs` options.
PXEROOT_INITRDS = {
    "pxeroot": ("initrd.img", []),
    "pxeroot-full": ("initrd.img", []),
    "pxeroot-nics": ("initrd-nics.img", ["--nics", REF_NICS]),
    "pxeroot-lz4": ("initrd-lz4.img", ["--nics", REF_NICS, "--compress", "lz4"]),
    # --compare DIR: an older build (DIR/pxeroot, DIR/pxeroot-init) with the
    # defaults, for a regression check in the same run.
    "pxeroot-old": ("initrd-old.img", []),
}
for _s in PXEROOT_INITRDS:
    INIT_PATTERNS[_s] = INIT_PATTERNS["pxeroot"]
INIT_PATTERNS["reference-zstd"] = INIT_PATTERNS["reference"]
# Stages from console landmarks. "init" spans /init's module loading,
# network and NBD attach: pxeroot-init overlaps them, so only the span is
# comparable; INIT_MARKS below shows each one's time from /init's start.
STAGES = [("dhcp", "ipxe_ready", "dhcp_done"), ("files", "dhcp_done", "files_loaded"),
          ("kernel", "files_loaded", "init_started"), ("init", "init_started", "nbd_attached"),
          ("mount", "nbd_attached", "root_started"), ("root", "root_started", "root_marker")]
INIT_MARKS = ["modules_loaded", "network_up", "nbd_attached"]
# "unpack" is measured apart (calibrate_unpack) and taken out of "kernel".
OWNED = ["dhcp", "files", "unpack", "init", "mount"]
UNPACK_PROBES = 3


# A diskless TCG guest with its serial console on stdout (boot-chain.md).
QEMU = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc,graphics=off", "-m", "256", "-smp", "1", "-nodefaults",
        "-vga", "none", "-display", "none", "-no-reboot", "-serial", "stdio"]


def sh(*cmd, ns=None):
    subprocess.run((["ip", "netns", "exec", ns] if ns else []) + list(cmd), check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def spawn(ns, cmd, log):
    """A server in namespace `ns`; `ip netns exec` execs it, so the pid is the server's."""
    return subprocess.Popen(["ip", "netns", "exec", ns] + cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    procs.clear()


def wait_listening(ns, port, proto="u", timeout=10.0):
    """Wait until something in `ns` listens on `port` (ss -l), so no boot starts before its server."""
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", f"-ln{proto}", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        if f":{port}" in out:
            return
        time.sleep(0.05)
    sys.exit(f"nothing listens on {proto}dp port {port} in {ns} after {timeout} s")


def boot_one(stack, mac, tap, out, logdir):
    patterns = [(name, re.compile(pat or INIT_PATTERNS[stack][name])) for name, pat in COMMON]
    t0 = time.time()
    p = subprocess.Popen(["timeout", str(BOOT_TIMEOUT_S), "ip", "netns", "exec", LAN] + QEMU + ["-boot", "order=n",
                          "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                          "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times, line, console, killer = {}, "", [], None
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        now = time.time() - t0
        text = chunk.decode("latin-1").replace("\r", "")
        console.append(text)
        line += text
        for name, rx in patterns:
            if name not in times and rx.search(line):
                times[name] = now
        if "root_marker" in times and killer is None:
            # Measured: the rest is the root's shutdown. A root whose NBD
            # client systemd kills at shutdown (the reference's nbd-client)
            # may never power off.
            killer = threading.Timer(POWEROFF_GRACE_S, p.kill)
            killer.start()
        line = line[line.rfind("\n") + 1:]
    p.wait()
    if killer:
        killer.cancel()
    times["power_off"] = time.time() - t0
    failed = "root_marker" not in times
    if failed or KEEP_CONSOLES:
        path = os.path.join(logdir, f"{'failed' if failed else 'console'}-{stack}-{mac.replace(':', '')}.log")
        with open(path, "w") as f:
            f.write("".join(console))
    if failed:
        print(f"  {stack} {mac}: no root marker (QEMU exit {p.returncode}); console in {path}", file=sys.stderr)
    out[mac] = times


class Lab:
    """Namespaces: LAN (bridge, taps, the site's DHCP server) and SRV (the boot server, joined by veth)."""

    def __init__(self, work, taps):
        self.work = work
        for ns in (LAN, SRV):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
            # No duplicate address detection: addresses (and the router
            # advertisements sent from them) are usable at once.
            sh("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0", ns=ns)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=LAN)
        sh("ip", "addr", "add", "10.99.0.254/24", "dev", "br0", ns=LAN)
        sh("ip", "-6", "addr", "add", "fd99::fe/64", "dev", "br0", ns=LAN)
        sh("ip", "link", "set", "br0", "up", ns=LAN)
        for i in range(taps):
            sh("ip", "tuntap", "add", "dev", f"tap{i}", "mode", "tap", ns=LAN)
            sh("ip", "link", "set", f"tap{i}", "master", "br0", ns=LAN)
            sh("ip", "link", "set", f"tap{i}", "up", ns=LAN)
        sh("ip", "link", "add", "vlan0", "type", "veth", "peer", "name", "vsrv0", "netns", SRV, ns=LAN)
        sh("ip", "link", "set", "vlan0", "master", "br0", ns=LAN)
        sh("ip", "link", "set", "vlan0", "up", ns=LAN)
        sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", "vsrv0", ns=SRV)
        sh("ip", "link", "set", "vsrv0", "up", ns=SRV)

    def site_dhcp(self, log, macs):
        """The site's DHCP server for one group of boots: a fresh lease table
        and a fixed address per client. Without them dnsmasq (no-ping) offered
        one address to two clients booting at once, NAKed the second's
        REQUEST ("address in use"), and QEMU's iPXE (2019) kept requesting
        it and ended with IPv6 only: the "nothing to boot" failures of
        earlier runs, in every stack, were this."""
        d = os.path.join(self.work, "site")
        os.makedirs(d, exist_ok=True)
        if os.path.exists(f"{d}/leases"):
            os.remove(f"{d}/leases")
        hosts = [f"--dhcp-host={mac},10.99.0.{20 + i}" for i, mac in enumerate(macs)]
        p = spawn(LAN, ["dnsmasq", "--no-daemon", "--port=0", "--interface=br0", "--bind-interfaces", "--no-ping",
                        "--dhcp-authoritative", "--dhcp-range=10.99.0.20,10.99.0.250,255.255.255.0,1h",
                        "--enable-ra", "--dhcp-range=fd99::,ra-only,64", f"--dhcp-leasefile={d}/leases",
                        f"--pid-file={d}/pid"] + hosts, log)
        wait_listening(LAN, 67)
        return p


class Pxeroot:
    def __init__(self, work, full, initrd, binary=PXEROOT):
        self.work, self.full, self.initrd, self.binary = work, full, initrd, binary
        self.boot = os.path.join(work, "boot")

    def initramfs(self):
        return os.path.join(self.boot, self.initrd)

    def start(self, lab, log, macs):
        state = tempfile.mkdtemp(dir=self.work, prefix="state-")
        conf = os.path.join(state, "pxeroot.toml")
        dhcp = ('mode = "full"\npool_start = "10.99.0.100"\npool_end = "10.99.0.199"\nipv6_router_advertisements = true\n'
                if self.full else 'mode = "proxy"\n')
        with open(conf, "w") as f:
            f.write(f'state_dir = "{state}"\n[nbd]\nlisten = ["{SERVER_IP}:10809"]\n[pxe]\n'
                    f'server_address = "{SERVER_IP}"\nboot_dir = "{self.boot}"\n[dhcp]\ninterface = "vsrv0"\n{dhcp}'
                    f'[images.root]\npath = "{self.work}/root.img"\nkernel = "vmlinuz"\ninitrd = "{self.initrd}"\n'
                    'cmdline = "console=ttyS0 panic=-1 quiet"\n'
                    '[unknown_clients]\naction = "boot"\nimage = "root"\npolicy = "ephemeral"\n')
        procs = [spawn(SRV, [self.binary, "--log", "warn", "serve", "--config", conf], log)]
        if not self.full:
            procs.insert(0, lab.site_dhcp(log, macs))
        wait_listening(SRV, 4011)
        wait_listening(SRV, 10809, "t")
        # The site's dnsmasq is not the boot server: its CPU is not counted.
        return procs, procs[-1:]


class Reference:
    def __init__(self, work, init_modules, compress):
        self.work = work
        self.tftp = os.path.join(work, f"ref-tftp-{compress}")
        os.makedirs(self.tftp)
        shutil.copy(os.path.join(KERNEL, "vmlinuz"), self.tftp)
        with open(os.path.join(self.tftp, "boot.ipxe"), "w") as f:
            f.write(f"#!ipxe\nkernel tftp://{SERVER_IP}/vmlinuz console=ttyS0 panic=-1 quiet nbdexport=${{mac:hexhyp}}\n"
                    f"initrd tftp://{SERVER_IP}/initrd.img\nboot\n")
        build_reference_initramfs(os.path.join(self.tftp, "initrd.img"), init_modules, work, compress)

    def initramfs(self):
        return os.path.join(self.tftp, "initrd.img")

    def start(self, lab, log, macs):
        ovl = tempfile.mkdtemp(dir=self.work, prefix="ref-ovl-")
        qsd = ["qemu-storage-daemon",
               "--blockdev", f"driver=file,filename={self.work}/root.img,node-name=base-file,read-only=on",
               "--blockdev", "driver=raw,file=base-file,node-name=base,read-only=on",
               "--nbd-server", f"addr.type=inet,addr.host={SERVER_IP},addr.port=10809"]
        for i, mac in enumerate(macs):
            path = os.path.join(ovl, f"{i}.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", f"{self.work}/root.img", path],
                           check=True)
            qsd += ["--blockdev", f"driver=qcow2,node-name=o{i},file.driver=file,file.filename={path},backing=base",
                    "--export", f"type=nbd,id=e{i},node-name=o{i},name={mac.replace(':', '-')},writable=on"]
        site = lab.site_dhcp(log, macs)
        server = [spawn(SRV, qsd, log),
                  spawn(SRV, ["dnsmasq", "--no-daemon", "--port=0", "--interface=vsrv0", "--bind-interfaces",
                              f"--dhcp-range={SERVER_IP},proxy", "--enable-tftp", f"--tftp-root={self.tftp}",
                              "--pxe-service=x86PC,pxeroot reference,boot.ipxe", "--leasefile-ro",
                              f"--pid-file={ovl}/dnsmasq.pid"], log)]
        wait_listening(SRV, 4011)
        wait_listening(SRV, 10809, "t")
        return [site] + server, server


def nbd_client_tree():
    """Debian's nbd-client and the libraries it needs that this host lacks, unpacked once into target/."""
    root = os.path.join(REF_CACHE, "debs")
    binary = os.path.join(root, "sbin", "nbd-client")
    if not os.path.exists(binary):
        dl = os.path.join(REF_CACHE, "download")
        os.makedirs(dl, exist_ok=True)
        subprocess.run(["apt-get", "download", "nbd-client", "libnl-genl-3-200", "libnl-3-200"], cwd=dl, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for deb in glob.glob(os.path.join(dl, "*.deb")):
            subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root, binary


def shared_libraries(binary, extra_dir):
    """The ELF interpreter and every library `binary` loads (ldd, with `extra_dir` searched first)."""
    env = dict(os.environ, LD_LIBRARY_PATH=extra_dir)
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env, check=True).stdout
    libs = []
    for line in out.splitlines():
        if "not found" in line:
            sys.exit(f"reference initramfs: {line.strip()} for {binary}")
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m:
            libs.append(m.group(1))
    return libs


def build_reference_initramfs(out, modules_dir, work, compress):
    debs, nbd_client = nbd_client_tree()
    tree = os.path.join(work, f"ref-initramfs-{compress}")
    for d in ["bin", "sbin", "proc", "sys", "dev", "newroot", "etc", "lib/modules", "run", "tmp"]:
        os.makedirs(os.path.join(tree, d), exist_ok=True)
    shutil.copy(shutil.which("busybox"), os.path.join(tree, "bin", "busybox"))
    shutil.copy(nbd_client, os.path.join(tree, "sbin", "nbd-client"))
    libdir = os.path.join(debs, "lib", "x86_64-linux-gnu")
    for lib in shared_libraries(nbd_client, libdir):
        # The ELF interpreter keeps its path; libraries go where ld.so looks.
        dest = os.path.join(tree, lib.lstrip("/") if "/ld-linux" in lib else f"lib/x86_64-linux-gnu/{os.path.basename(lib)}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(os.path.realpath(lib), dest)
    for m in REF_MODULES:
        found = glob.glob(os.path.join(modules_dir, "kernel", "**", f"{m}.ko"), recursive=True)
        if not found:
            sys.exit(f"reference initramfs: module {m}.ko not under {modules_dir}")
        shutil.copy(found[0], os.path.join(tree, "lib", "modules"))
    os.mknod(os.path.join(tree, "dev", "console"), 0o600 | 0o020000, os.makedev(5, 1))
    with open(os.path.join(tree, "etc", "udhcpc.script"), "w") as f:
        f.write('#!/bin/busybox sh\ncase "$1" in bound|renew) /bin/busybox ip addr add "$ip/$mask" dev "$interface";;'
                ' esac\nexit 0\n')
    with open(os.path.join(tree, "init"), "w") as f:
        f.write("#!/bin/busybox sh\n"
                "/bin/busybox --install -s /bin\n"
                "echo ref-init: start\n"
                "fail() { echo ref-init: $1 failed; poweroff -f; }\n"
                "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n"
                f"for m in {' '.join(REF_MODULES)}; do insmod /lib/modules/$m.ko || echo ref-init: insmod $m failed; done\n"
                f"echo ref-init: {len(REF_MODULES)} modules loaded\n"
                "ip link set eth0 up\n"
                "udhcpc -i eth0 -f -q -n -t 10 -T 1 -s /etc/udhcpc.script >/dev/null\n"
                "echo ref-init: network up\n"
                "export=$(sed -n 's/.*nbdexport=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n"
                f"nbd-client -N \"$export\" {SERVER_IP} 10809 /dev/nbd0 || fail nbd-client\n"
                "echo ref-init: nbd attached\n"
                "mount -t ext4 /dev/nbd0 /newroot || fail mount\n"
                "echo ref-init: switching root\n"
                "exec switch_root /newroot /sbin/init\n")
    for f in ("init", "etc/udhcpc.script"):
        os.chmod(os.path.join(tree, f), 0o755)
    # The kernel knows the format by its magic, whatever the file's name.
    packer = {"gzip": "gzip -9 -n", "zstd": "zstd -q -19 -T0 -c"}[compress]
    archive = subprocess.run(f"cd {tree} && find . | cpio -o -H newc -R 0:0 --quiet | {packer}",
                             shell=True, check=True, capture_output=True).stdout
    with open(out, "wb") as f:
        f.write(archive)


def debian_root(init):
    """images/build-debian-root's image with images/debian-test's marker units,
    built once into target/bench-reference (debootstrap needs the Debian
    mirror the first time), named by what it was built from. Every stack
    boots it read-only through its own overlays."""
    units = os.path.join(ROOT, "images", "debian-test")
    h = hashlib.sha256(open(os.path.join(ROOT, "images", "build-debian-root"), "rb").read())
    for d, _, files in sorted(os.walk(units)):
        for name in sorted(files):
            path = os.path.join(d, name)
            h.update(path[len(units):].encode() + (os.readlink(path).encode() if os.path.islink(path) else open(path, "rb").read()))
    img = os.path.join(REF_CACHE, f"debian-root-{h.hexdigest()[:12]}.img")
    if not os.path.exists(img):
        os.makedirs(REF_CACHE, exist_ok=True)
        subprocess.run([os.path.join(ROOT, "images/build-debian-root"), img + ".tmp", init, "--size", "2G", "--add", units,
                        "--cache-dir", os.path.join(REF_CACHE, "debootstrap")], check=True, stdout=subprocess.DEVNULL)
        os.rename(img + ".tmp", img)
    return img


def calibrate_unpack(initrd):
    """The kernel's time to unpack `initrd`: QEMU boots the kernel directly with
    it, unpacking synchronously (initramfs_async=0), and the kernel's own
    timestamps on "Trying to unpack rootfs" and "Freeing initrd memory" bound it."""
    times = []
    for _ in range(UNPACK_PROBES):
        p = subprocess.Popen(["timeout", "60"] + QEMU + ["-kernel", os.path.join(KERNEL, "vmlinuz"), "-initrd", initrd, "-append",
                              "console=ttyS0 loglevel=7 initramfs_async=0 panic=-1"],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                             errors="replace", start_new_session=True)
        start = None
        for line in p.stdout:
            m = re.match(r"\[\s*([0-9.]+)\]", line)
            if m and "Trying to unpack rootfs" in line:
                start = float(m.group(1))
            elif m and "Freeing initrd memory" in line and start is not None:
                times.append(float(m.group(1)) - start)
                break
        # The guest never powers off (its /init waits for a server): end
        # QEMU itself, not only `timeout`, or it keeps eating CPU through
        # the boots that follow.
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    if not times:
        sys.exit(f"the kernel did not report unpacking {initrd}")
    return statistics.median(times)


def median(vals):
    return statistics.median(vals) if vals else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", default="1,2,3")
    ap.add_argument("--stacks", default="pxeroot,pxeroot-nics,pxeroot-lz4,reference,reference-zstd")
    ap.add_argument("--keep-consoles", metavar="DIR", help="save every client's serial console in DIR")
    ap.add_argument("--root", choices=["busybox", "debian"], default="busybox", help="the root image the clients boot")
    ap.add_argument("--smp", type=int, default=1, help="virtual CPUs per client (TCG runs each on a host thread)")
    ap.add_argument("--compare", metavar="DIR",
                    help="add stack pxeroot-old: DIR/pxeroot and DIR/pxeroot-init (an older build), and print pxeroot / pxeroot-old")
    args = ap.parse_args()
    QEMU[QEMU.index("-smp") + 1] = str(args.smp)
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces and taps)")
    init = next((p for p in [os.path.join(ROOT, "target/x86_64-unknown-linux-musl/init/pxeroot-init"),
                             os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/init/pxeroot-init")] if os.path.exists(p)), None)
    if not (os.path.exists(PXEROOT) and init and os.path.exists(os.path.join(KERNEL, "ready"))):
        sys.exit("run tests/run-all (or ./demo) once, then cargo build --release")
    global KEEP_CONSOLES
    KEEP_CONSOLES = bool(args.keep_consoles)
    counts = [int(c) for c in args.clients.split(",")]
    names = args.stacks.split(",")
    old_bin = old_init = None
    if args.compare:
        old_bin, old_init = os.path.join(args.compare, "pxeroot"), os.path.join(args.compare, "pxeroot-init")
        if not (os.path.exists(old_bin) and os.path.exists(old_init)):
            sys.exit(f"--compare: {args.compare} needs pxeroot and pxeroot-init")
        names.append("pxeroot-old")
    for s in names:
        if s not in INIT_PATTERNS:
            sys.exit(f"unknown stack {s!r}: choose from {', '.join(INIT_PATTERNS)}")
    work = tempfile.mkdtemp(prefix="pxeroot-boot-bench-")
    logdir = args.keep_consoles or work
    os.makedirs(logdir, exist_ok=True)
    procs = []

    def cleanup():
        stop(procs)
        for ns in (LAN, SRV):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        if not glob.glob(os.path.join(work, "failed-*")):
            shutil.rmtree(work, ignore_errors=True)
    atexit.register(cleanup)

    boot = os.path.join(work, "boot")
    os.makedirs(boot)
    shutil.copy(os.path.join(KERNEL, "vmlinuz"), boot)
    for s in names:
        if s not in PXEROOT_INITRDS:
            continue
        name, opts = PXEROOT_INITRDS[s]
        binary, its_init = (old_bin, old_init) if s == "pxeroot-old" else (PXEROOT, init)
        subprocess.run([binary, "initramfs", "--kernel-modules", os.path.join(KERNEL, "modules"), "-o",
                        os.path.join(boot, name), "--init", its_init] + opts, check=True, stdout=subprocess.DEVNULL)
    if args.root == "debian":
        os.symlink(debian_root(init), os.path.join(work, "root.img"))
    else:
        subprocess.run([os.path.join(ROOT, "images/build-test-root"), os.path.join(work, "root.img"), init],
                       check=True, stdout=subprocess.DEVNULL)
    stacks = {}
    for s in names:
        if s.startswith("reference"):
            stacks[s] = Reference(work, os.path.join(KERNEL, "modules"), "zstd" if s == "reference-zstd" else "gzip")
        else:
            stacks[s] = Pxeroot(work, s == "pxeroot-full", PXEROOT_INITRDS[s][0], old_bin if s == "pxeroot-old" else PXEROOT)
    unpack = {}
    for s in names:
        unpack[s] = calibrate_unpack(stacks[s].initramfs())
        print(f"{s:14} initramfs unpack: {unpack[s]:.3f} s (median of {UNPACK_PROBES} direct kernel boots)", flush=True)
    lab = Lab(work, max(counts))
    log = open(os.path.join(work, "servers.log"), "w")

    results = {(s, n): [] for s in names for n in counts}
    cpu = {s: [] for s in names}
    for rnd in range(args.rounds):
        for n in counts:
            # Alternate the order so neither stack always runs on a warmer machine.
            order = names if (rnd + n) % 2 == 0 else names[::-1]
            for s in order:
                si = names.index(s)
                macs = [f"52:54:00:be:{rnd:02x}:{si * 16 + n * 4 + i:02x}" for i in range(n)]
                stack = stacks[s]
                started, server = stack.start(lab, log, macs)
                procs.extend(started)
                before = sum(cpu_seconds(p.pid) for p in server)
                out = {}
                threads = [threading.Thread(target=boot_one, args=(s, mac, f"tap{i}", out, logdir))
                           for i, mac in enumerate(macs)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                cpu[s].append((sum(cpu_seconds(p.pid) for p in server) - before) / n)
                stop(procs)
                results[(s, n)].append(out)
                worst = max(v.get("root_marker", float("inf")) for v in out.values())
                print(f"round {rnd + 1}/{args.rounds}: {s:14} {n} client(s): last marker at {worst:.2f} s", flush=True)

    print()
    for s in names:
        print(f"{s:14} initramfs {os.path.getsize(stacks[s].initramfs()):>9} bytes; "
              f"server CPU per boot: median {median(cpu[s]):.3f} s")
    cols = ["dhcp", "files", "kernel", "unpack", "init", "mount", "root", "owned", "total"]
    print(f"\nmedians in seconds; per client, over {args.rounds} round(s), {args.smp} vCPU(s) each; unpack from the direct boots above")
    print(f"{'stack':14} {'clients':>7}" + "".join(f"{c:>8}" for c in cols))
    table = {}
    for n in counts:
        for s in names:
            boots = [b for r in results[(s, n)] for b in r.values() if "root_marker" in b]
            complete = [x for x in boots if all(k in x for _, a, b in STAGES for k in (a, b))]
            row = {st: median([x[b] - x[a] for x in complete]) for st, a, b in STAGES}
            row["unpack"] = unpack[s]
            row["kernel"] -= unpack[s]
            row["owned"] = median([sum(x[b] - x[a] for st, a, b in STAGES if st in OWNED) + unpack[s] for x in complete])
            row["total"] = median([x["root_marker"] for x in boots])
            failed = sum(len(r) for r in results[(s, n)]) - len(boots)
            table[(s, n)] = row
            print(f"{s:14} {n:>7}" + "".join(f"{row[c]:8.2f}" for c in cols) + (f"  ({failed} failed)" if failed else ""))
    print("\n/init, seconds from its start (medians, 1 client at a time where run):")
    n0 = min(counts)
    for s in names:
        boots = [b for r in results[(s, n0)] for b in r.values() if "root_marker" in b and "init_started" in b]
        marks = [f"{m} {median([x[m] - x['init_started'] for x in boots if m in x]):.2f}" for m in INIT_MARKS]
        print(f"  {s:14} " + ", ".join(marks))
    if "pxeroot-old" in names and "pxeroot" in names:
        print("\nratios pxeroot / pxeroot-old (this build against the older one; lower is better)")
        for n in counts:
            p, o = table[("pxeroot", n)], table[("pxeroot-old", n)]
            print(f"  {n} client(s) at once: owned stages {p['owned'] / o['owned']:.2f}x, whole boot {p['total'] / o['total']:.2f}x, "
                  f"init {p['init'] / o['init']:.2f}x, server CPU {median(cpu['pxeroot']) / max(median(cpu['pxeroot-old']), 1e-9):.2f}x")
    for ours in [s for s in names if s.startswith("pxeroot") and s != "pxeroot-old"]:
        for ref in [r for r in names if r.startswith("reference")]:
            print(f"\nratios {ours} / {ref} (lower is better)")
            for n in counts:
                p, r = table[(ours, n)], table[(ref, n)]
                print(f"  {n} client(s) at once: owned stages {p['owned'] / r['owned']:.2f}x, whole boot {p['total'] / r['total']:.2f}x")

if __name__ == "__main__":
    main()
