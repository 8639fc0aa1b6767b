//! pxeroot-init: the initramfs's `/init`. It puts the root filesystem on
//! NBD and hands over to the real init:
//!
//! 1. mount /proc, /sys, devtmpfs on /dev (device nodes made if missing);
//! 2. read its settings from the kernel command line (`cmdline.rs`);
//! 3. load the kernel modules listed in `/etc/pxeroot/modules`, in the
//!    dependency order `pxeroot initramfs` computed (the NIC drivers whose
//!    device is there; the root's groups beside them on a second CPU);
//! 4. bring the boot interface up with its address and route;
//! 5. connect to pxeroot and negotiate the export (retrying with backoff);
//! 6. attach `/dev/nbd0`: over netlink (default; a monitor process
//!    reconnects), or with the ioctls (a hardened process in NBD_DO_IT);
//! 7. mount the root (the whole disk, or a partition of a GPT or MBR
//!    table: `pxeroot.partition`, `root=PARTUUID=|UUID=|LABEL=`, or the
//!    GPT root type), move /proc, /sys, /dev into
//!    it, free the initramfs, switch root and exec the real init.
//!
//! Every step prints one line with its duration. As PID 1 it must never
//! exit or panic (either is a kernel panic): failures print what was tried
//! and what to check, then retry where a retry can help, or wait forever.

#![deny(unsafe_code)]

mod attach;
mod boot;
mod console;
mod dhcpio;
mod error;
mod keeper;
mod modules;
mod nbd;
mod nbdnl;
mod nic;
mod root;
// The one module with `unsafe`: every block there has a SAFETY comment
// (clippy's undocumented_unsafe_blocks, run by tests/run-all).
#[allow(unsafe_code)]
mod sys;

// The pure codecs and decisions, shared with fuzz/ and the tests.
pub(crate) use pxeroot_init::{cmdline, dhcp, handoff, lease, netlink, tcpstate};

use std::time::Instant;

use crate::attach::{disconnect, keep_nbd_device, run_monitor, DISCONNECT_NAME, KEEPER_FLAG, MONITOR_FLAG};
use crate::boot::boot;
use crate::console::Console;
use crate::keeper::{keep_lease, LEASE_FLAG};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(KEEPER_FLAG) => keep_nbd_device(&args),
        Some(MONITOR_FLAG) => run_monitor(&args[2..]),
        Some(LEASE_FLAG) => keep_lease(&args[2..]),
        _ => {}
    }
    if args.first().map(|a| a.rsplit('/').next() == Some(DISCONNECT_NAME)).unwrap_or(false) {
        let then = match args.get(1).map(String::as_str) {
            Some("poweroff") => Some(sys::Finally::PowerOff),
            Some("reboot") | Some("kexec") => Some(sys::Finally::Reboot),
            Some("halt") => Some(sys::Finally::Halt),
            _ => None,
        };
        std::process::exit(disconnect("/dev/nbd0", then));
    }
    let con = Console { start: Instant::now() };
    if let Err(e) = boot(&con) {
        con.give_up(&e);
    }
}
