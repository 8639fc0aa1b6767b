//! The NBD connection and `/dev/nbd0`: connect and negotiate with retries,
//! attach by netlink (a monitor process reconnects) or by ioctl (a keeper
//! process in NBD_DO_IT), and `pxeroot-disconnect` at shutdown.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cmdline::{self, Settings};
use crate::console::{helper_say, Console, KMSG};
use crate::dhcpio::MAX_BACKOFF;
use crate::error::{Context, InitError};
use crate::{nbd, nbdnl, sys, tcpstate};

/// argv[0] of the process that stays in NBD_DO_IT: the leading `@` tells
/// systemd it is a root storage daemon to spare at shutdown.
pub(crate) const KEEPER_ARGV0: &str = "@pxeroot-nbd";

pub(crate) const KEEPER_FLAG: &str = "--keep-nbd-device";

pub(crate) const MONITOR_FLAG: &str = "--monitor";

/// Invoked under this name (a copy or link of this binary in the root
/// image, e.g. in /usr/lib/systemd/system-shutdown/), it disconnects
/// /dev/nbd0 cleanly: the kernel sends NBD's DISC to the server.
pub(crate) const DISCONNECT_NAME: &str = "pxeroot-disconnect";

/// How long pxeroot-disconnect waits for the server to close the NBD
/// connection after the DISC before it powers off anyway.
pub(crate) const DISC_WAIT: Duration = Duration::from_secs(2);

/// How long after link-up a switch port may forward nothing: STP's
/// listening and learning states (2 x 15 s forward delay) on a port that
/// is not an edge (portfast) port, with some margin.
pub(crate) const SWITCH_HOLD: Duration = Duration::from_secs(45);

/// A negotiated NBD connection: the socket, and the export's size and flags.
pub(crate) struct Connected {
    pub(crate) sock: std::net::TcpStream,
    pub(crate) info: nbd::Export,
}

/// Reach the server and negotiate, forever, with backoff: a server that is
/// down or restarting, or an export not configured yet, may come good.
pub(crate) fn connect_with_retry(con: &Console, s: &Settings, export: &str, link_up: Instant) -> Connected {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let t = Instant::now();
        match nbd::connect(s.server, export) {
            Ok((sock, info)) => {
                con.say(format_args!("NBD connect to {} export {export}: ok ({:.3} s)", s.server, t.elapsed().as_secs_f64()));
                return Connected { sock, info };
            }
            Err(e) => {
                // Nothing answered: soon after link-up, the switch may be why.
                let unanswered = matches!(&e, nbd::HandshakeError::Io(io)
                    if io.kind() == std::io::ErrorKind::TimedOut
                        || matches!(io.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH)));
                let switch = if unanswered && link_up.elapsed() < SWITCH_HOLD {
                    format!(
                        "; the link came up {:.0} s ago, and a switch port that is not an edge (portfast) port forwards \
                         nothing for about 30 s",
                        link_up.elapsed().as_secs_f64()
                    )
                } else {
                    String::new()
                };
                con.say(format_args!(
                    "NBD connect to {} export {export} failed (attempt {attempt}): {e}; check pxeroot.server= and that \
                     pxeroot serves this export{switch}; retrying in {:.1} s",
                    s.server,
                    backoff.as_secs_f64()
                ));
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

pub(crate) fn attach_ioctl(s: &Settings, sock: std::net::TcpStream, info: nbd::Export) -> Result<(), InitError> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/nbd0")
        .or_else(|_| {
            sys::mknod("/dev/nbd0", sys::S_IFBLK | 0o600, 43, 0)?;
            std::fs::OpenOptions::new().read(true).write(true).open("/dev/nbd0")
        })
        .context("opening /dev/nbd0 (is nbd.ko in the initramfs?)")?;
    let fd = dev.as_raw_fd();
    let io = |what: &str, r: std::io::Result<libc::c_int>| r.map(|_| ()).context(what);
    io("NBD_SET_BLKSIZE", sys::ioctl_arg(fd, nbd::NBD_SET_BLKSIZE, nbd::BLOCK_SIZE as _))?;
    io("NBD_SET_SIZE", sys::ioctl_arg(fd, nbd::NBD_SET_SIZE, info.size as _))?;
    io("NBD_CLEAR_SOCK", sys::ioctl_arg(fd, nbd::NBD_CLEAR_SOCK, 0))?;
    io("NBD_SET_FLAGS", sys::ioctl_arg(fd, nbd::NBD_SET_FLAGS, info.flags as _))?;
    let ro = s.read_only || info.flags & nbd_wire::consts::TFLAG_READ_ONLY != 0;
    sys::set_block_read_only(fd, ro).context("BLKROSET")?;
    io("NBD_SET_TIMEOUT", sys::ioctl_arg(fd, nbd::NBD_SET_TIMEOUT, s.timeout as _))?;
    io("NBD_SET_SOCK", sys::ioctl_arg(fd, nbd::NBD_SET_SOCK, sock.as_raw_fd() as _))?;
    // The keeper process sits in NBD_DO_IT for the life of the machine. It
    // is a fresh exec of this binary so its argv[0] can start with '@'.
    sys::keep_across_exec(fd).context("fcntl")?;
    spawn_helper("NBD keeper", KEEPER_ARGV0, &[KEEPER_FLAG.to_string(), fd.to_string()])?;
    // The kernel holds its own references now; the device becomes usable
    // once the keeper is inside NBD_DO_IT and the kernel has set its size:
    // the pid appears in sysfs *before* the size does (nbd_start_device),
    // and a mount in between reads a 0-byte device ("unable to read
    // superblock", seen once in the QEMU tests). Wait for both.
    let sectors = (info.size / 512).to_string();
    let ready =
        || Path::new("/sys/block/nbd0/pid").exists() && std::fs::read_to_string("/sys/block/nbd0/size").is_ok_and(|t| t.trim() == sectors);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        if Instant::now() > deadline {
            return Err(InitError::new("the NBD keeper did not start within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(sock);
    drop(dev);
    Ok(())
}

/// Exec this binary again as `KEEPER_ARGV0` with `args` in a child: a
/// helper that outlives switch_root (the fds it needs must be marked to
/// survive exec first). std's spawn is safe beside other threads
/// (posix_spawn, or a fork whose child only execs). The child is never
/// waited for: it lives as long as the root, and the root's init inherits
/// it.
pub(crate) fn spawn_helper(what: &str, argv0: &str, args: &[String]) -> Result<(), InitError> {
    let mut c = std::process::Command::new("/init");
    c.arg0(argv0).args(args);
    // The kernel log as its stdout (see `helper_say`): opened here, while
    // /dev is still mounted where the helper's root can reach it.
    if let Ok(kmsg) = std::fs::OpenOptions::new().write(true).open(KMSG) {
        c.stdout(kmsg);
    }
    c.spawn().map(drop).with_context(|| format!("starting the {what}"))
}

/// The keeper: `@pxeroot-nbd --keep-nbd-device FD`. Never returns while the
/// device lives.
pub(crate) fn keep_nbd_device(args: &[String]) -> ! {
    let fd: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(-1);
    if let Err(e) = sys::harden_root_keeper() {
        helper_say("pxeroot-nbd", format_args!("hardening failed: {e}"));
    }
    match sys::ioctl_arg(fd, nbd::NBD_DO_IT, 0) {
        Ok(_) => helper_say("pxeroot-nbd", format_args!("NBD_DO_IT returned: the device was disconnected")),
        Err(e) => helper_say("pxeroot-nbd", format_args!("NBD_DO_IT failed: {e}")),
    }
    std::process::exit(0)
}

/// The netlink attach's two sockets: one subscribed to the NBD family's
/// events (the monitor's, subscribed before the connect so no LINK_DEAD is
/// missed), one for the CONNECT.
pub(crate) struct NetlinkAttach {
    pub(crate) events: nbdnl::Genl,
    pub(crate) cmd: nbdnl::Genl,
}

impl NetlinkAttach {
    pub(crate) fn open() -> Result<NetlinkAttach, InitError> {
        let events = nbdnl::Genl::open()?;
        events.join_events()?;
        Ok(NetlinkAttach { events, cmd: nbdnl::Genl::open()? })
    }
}

/// The monitor to start once the device is attached: its arguments name
/// the events socket, which it keeps open.
pub(crate) struct Monitor {
    pub(crate) argv: Vec<String>,
    pub(crate) _events: nbdnl::Genl,
}

/// CONNECT through netlink with a dead-connection timeout; returns the
/// monitor that reconnects when the link dies, to start.
pub(crate) fn attach_netlink(
    s: &Settings,
    export: &str,
    genl: NetlinkAttach,
    sock: std::net::TcpStream,
    info: nbd::Export,
) -> Result<Monitor, InitError> {
    const INDEX: u32 = 0;
    let NetlinkAttach { events, mut cmd } = genl;
    cmd.connect(INDEX, &sock, info, s.timeout, s.reconnect)?;
    let args = nbdnl::MonitorArgs {
        events_fd: events.raw_fd(),
        index: INDEX,
        server: s.server,
        export: export.to_string(),
        size: info.size,
        flags: info.flags,
    };
    sys::keep_across_exec(events.raw_fd()).context("fcntl")?;
    let mut argv = vec![MONITOR_FLAG.to_string()];
    argv.extend(args.to_args());
    Ok(Monitor { argv, _events: events })
}

/// The monitor: `@pxeroot-nbd --monitor FD INDEX SERVER EXPORT SIZE FLAGS`.
pub(crate) fn run_monitor(args: &[String]) -> ! {
    let Some(m) = nbdnl::MonitorArgs::parse(args) else {
        helper_say("pxeroot-nbd", format_args!("bad monitor arguments {args:?}"));
        std::process::exit(2);
    };
    if let Err(e) = sys::harden_root_keeper() {
        helper_say("pxeroot-nbd", format_args!("hardening failed: {e}"));
    }
    nbdnl::monitor(&m, |msg| helper_say("pxeroot-nbd", format_args!("{msg}")))
}

/// `pxeroot-disconnect [poweroff|reboot|halt|kexec]`: sync, NBD_DISCONNECT
/// on the root device, then (given a verb, as systemd passes to its
/// system-shutdown hooks) end the machine at once: after the disconnect the
/// root is gone, so nothing that needs a file (not even `poweroff`) can run.
/// Run it after the root is read-only. Returns the exit code.
pub(crate) fn disconnect(device: &str, then: Option<sys::Finally>) -> i32 {
    sys::sync();
    let dev = match std::fs::OpenOptions::new().read(true).open(device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("pxeroot-disconnect: opening {device}: {e}");
            return 1;
        }
    };
    match sys::ioctl_arg(dev.as_raw_fd(), nbd::NBD_DISCONNECT, 0) {
        Ok(_) => {
            // The kernel has queued the DISC; powering off at once can drop
            // it (seen under QEMU). Wait, boundedly, until the server has
            // closed the connection: it closes after reading the DISC.
            let server = std::fs::read_to_string("/proc/cmdline").ok().and_then(|c| cmdline::parse(&c).ok()).map(|s| s.server);
            if let Some(server) = server {
                let deadline = Instant::now() + DISC_WAIT;
                while std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| tcpstate::open_to(&t, server)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            println!("pxeroot-disconnect: {device} disconnected");
            if let Some(how) = then {
                let e = sys::reboot(how);
                eprintln!("pxeroot-disconnect: reboot({how:?}): {e}");
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("pxeroot-disconnect: NBD_DISCONNECT on {device}: {e}");
            1
        }
    }
}
