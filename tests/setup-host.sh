# Sourced by tests/run-all and ./demo: installs what they need on a fresh
# Debian 12 machine (apt packages without their recommends, Rust), fetches
# the guest kernel and builds the static pxeroot-init. Run from the
# repository's top directory. tests/tools/check-packages checks the lists
# against the tools the scripts call.
#
# SETUP_FOR=demo (set by ./demo) installs only what the demo runs; the
# default, tests, adds every peer the test suite judges against (and Kea,
# ISC dhcpd and virt-firmware, which only tests use). SETUP_EXTRA adds
# packages (./demo's ROOT=debian: debootstrap).

# The demo: QEMU with its iPXE ROMs, qemu-img, the test root's tools
# (busybox, mke2fs), namespaces, the C compiler the lz4 and zstd crates'
# builds need, curl for rustup, python3 for the timeline.
packages=(qemu-system-x86 ipxe-qemu qemu-utils e2fsprogs busybox-static iproute2 gcc curl ca-certificates python3)
if [ "${SETUP_FOR:-tests}" = tests ]; then
    # NBD peers (nbdinfo, nbdcopy, nbdkit, fio), boot peers (iPXE's
    # binaries, OVMF, AAVMF, QEMU for ARM64, dnsmasq, atftp, Kea's
    # libraries), the images' and archives' tools, sfdisk, debootstrap,
    # a venv for virt-firmware; cmake and pkg-config for libz-sys's build.
    packages+=(libnbd-bin nbdkit fio btrfs-progs fdisk cmake pkg-config ipxe ovmf qemu-system-arm qemu-efi-aarch64
               debootstrap python3-venv cpio zstd lz4 xz-utils dnsmasq-base atftp kea-common)
fi
packages+=(${SETUP_EXTRA:-})
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# On a terminal, long steps show their progress (apt's and cargo's bars);
# in CI and logs they stay quiet.
if [ -t 2 ]; then CARGO_QUIET=(); else CARGO_QUIET=(-q); fi
if ((${#missing[@]})); then
    echo "==> installing: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    # qemu-system-x86 and qemu-utils must come from the same QEMU release
    # (Debian 12's): a newer qemu-utils already there (this machine kind
    # has bookworm-backports' 10.0, with no source for it) breaks Debian
    # 12's qemu-system-common, and apt never downgrades on its own. Both
    # are pinned to the version qemu-system-x86 is installed at.
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* || " ${missing[*]} " == *" qemu-utils "* ]]; then
        qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        kept=()
        for p in "${missing[@]}"; do [[ $p == qemu-utils || $p == qemu-system-x86 ]] || kept+=("$p"); done
        missing=("${kept[@]}" "qemu-utils=$qemu_version" "qemu-system-x86=$qemu_version")
    fi
    if [ -t 1 ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends -o Dpkg::Progress-Fancy=1 --allow-downgrades "${missing[@]}"
    else
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" >/dev/null
    fi
fi
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi

# A Debian kernel for QEMU guests (the host kernel has no nbd module):
# linux-image-amd64's dependency, unpacked, cached under target/.
kdir=target/guest-kernel
if [ ! -f "$kdir/ready" ]; then
    echo "==> fetching the guest kernel"
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    rm -rf "$kdir" && mkdir -p "$kdir"
    if [ -t 1 ]; then
        (cd "$kdir" && apt-get download "$pkg" && dpkg -x ./*.deb root && rm -f ./*.deb)
    else
        (cd "$kdir" && apt-get download "$pkg" >/dev/null 2>&1 && dpkg -x ./*.deb root && rm -f ./*.deb)
    fi
    cp "$kdir"/root/boot/vmlinuz-* "$kdir/vmlinuz"
    ln -sfn "$(ls -d "$PWD/$kdir"/root/lib/modules/* | head -n 1)" "$kdir/modules"
    touch "$kdir/ready"
fi

if [ "${SETUP_FOR:-tests}" = tests ]; then
    # Site DHCP servers for the proxy tests beside them, Kea and ISC dhcpd:
    # only their binaries, unpacked under target/PACKAGE (installing the
    # packages would add and start system services), once per version.
    unpack() {
        local pkg=$1 version=$2 dir=target/$1
        [ "$(cat "$dir/version" 2>/dev/null)" = "$version" ] && return 0
        echo "==> $pkg $version (unpacked into $dir)"
        rm -rf "$dir" && mkdir -p "$dir"
        (cd "$dir" && apt-get download "$pkg=$version" >/dev/null 2>&1 && dpkg -x ./"$pkg"_*.deb . && rm -f ./*.deb) \
            || { echo "setup-host: cannot fetch $pkg $version: run apt-get update" >&2; exit 1; }
        echo "$version" > "$dir/version"
    }
    # Kea's libraries come with kea-common above and must be the same release.
    unpack kea-dhcp4-server "$(dpkg-query -W -f='${Version}' kea-common)"
    unpack isc-dhcp-server "$(apt-cache policy isc-dhcp-server | awk '/Candidate:/ {print $2}')"

    # virt-fw-vars (pip's virt-firmware) writes OVMF variable stores for the
    # UEFI HTTP boot test, into a venv under target/.
    if [ ! -x target/venv/bin/virt-fw-vars ]; then
        echo "==> virt-firmware (pip, into target/venv)"
        python3 -m venv target/venv && target/venv/bin/pip install -q virt-firmware
    fi
fi

echo "==> static pxeroot-init"
INIT_BINARY=$(boot/pxeroot-init/build-static)
