//! Every system call pxeroot-init makes that std does not wrap: mounts,
//! device nodes, module loading, the NBD and network ioctls, and hardening
//! the process that keeps the root device alive. The only `unsafe` in the
//! crate; each block says why it is sound.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains NUL"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub const MS_RDONLY: u64 = libc::MS_RDONLY;
pub const MS_MOVE: u64 = libc::MS_MOVE;
pub const MS_NOSUID: u64 = libc::MS_NOSUID;
pub const MS_NODEV: u64 = libc::MS_NODEV;
pub const MS_STRICTATIME: u64 = libc::MS_STRICTATIME;

pub fn mount(source: &str, target: &str, fstype: &str, flags: u64, data: &str) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all four pointers come from live CStrings, NUL-terminated, that outlive the call; the kernel copies them.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags as libc::c_ulong, d.as_ptr().cast()) })?;
    Ok(())
}

pub fn mknod(path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid NUL-terminated path for the duration of the call.
    match check(unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}

pub const S_IFCHR: u32 = libc::S_IFCHR;
pub const S_IFBLK: u32 = libc::S_IFBLK;
/// BLKRRPART: re-read a disk's partition table (no argument).
pub const BLKRRPART: libc::c_ulong = 0x125F;

/// Load a kernel module from an open file. `EEXIST` (already loaded, or
/// built in) counts as success.
pub fn finit_module(file: &std::fs::File, params: &str) -> io::Result<()> {
    let params = cstr(params)?;
    // SAFETY: finit_module(fd, const char *params, int flags): the fd is open for the call's duration and `params` is a valid C string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// An ioctl whose argument is an integer (or nothing).
pub fn ioctl_arg(fd: RawFd, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the NBD and block ioctls called through here take their argument by value, not as a pointer, so no memory is shared.
    check(unsafe { libc::ioctl(fd, request as _, arg) })
}

/// BLKROSET takes a pointer to an int.
pub fn set_block_read_only(fd: RawFd, ro: bool) -> io::Result<()> {
    let v: libc::c_int = ro as libc::c_int;
    // SAFETY: BLKROSET reads one int from the pointer, which points at `v` on this stack frame for the whole call.
    check(unsafe { libc::ioctl(fd, 0x125D, &v as *const libc::c_int) })?;
    Ok(())
}

/// Clear close-on-exec so a child we exec keeps the descriptor.
pub fn keep_across_exec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with 0 only changes the descriptor's flags.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
    Ok(())
}

/// Harden the process that keeps the root device alive: block every signal
/// (a signal would tear down NBD_DO_IT), never swap, never OOM-kill, and
/// mark it an I/O flusher so memory reclaim does not deadlock on it.
pub fn harden_root_keeper() -> io::Result<()> {
    // SAFETY: sigfillset initialises the set on this stack frame, and sigprocmask reads it; the old mask is not requested (null).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        check(libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()))?;
    }
    // SAFETY: mlockall takes flags only.
    check(unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) })?;
    std::fs::write("/proc/self/oom_score_adj", "-1000")?;
    // PR_SET_IO_FLUSHER (57) exists from Linux 5.6; older kernels say EINVAL,
    // which is not worth failing the boot for.
    // SAFETY: prctl with integer arguments only.
    let _ = unsafe { libc::prctl(57, 1, 0, 0, 0) };
    Ok(())
}

pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// Whole seconds since boot on CLOCK_BOOTTIME (it counts suspend too, as a
/// DHCP lease's time runs on while the machine sleeps).
pub fn boottime_secs() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // CLOCK_BOOTTIME exists since Linux 2.6.39, so the call cannot fail
    // (0 would stay on error).
    // SAFETY: `ts` is a valid, writable timespec for the whole call.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec.max(0) as u64
}

/// Stop here for good without exiting (PID 1 must not exit: that is a kernel
/// panic). Used only when nothing more can be tried.
pub fn halt_forever() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

// --- network configuration through the classic interface ioctls ---------

fn ifreq_with_name(name: &str) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    // SAFETY: ifreq is plain data (a name array and a union of plain data); all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes, and the kernel reads a sockaddr_in from this storage when sa_family is AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn control_socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket() has no pointer arguments; the returned fd is owned by the OwnedFd from here on.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn ifreq_ioctl(sock: RawFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request passed here (SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR, SIOCSIFNETMASK, SIOCSIFMTU) reads or writes one struct ifreq, and `req` points at a live, initialised one.
    check(unsafe { libc::ioctl(sock, request as _, req as *mut libc::ifreq) })?;
    Ok(())
}

/// Bring an interface up.
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq_with_name(name)?;
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
}

/// Give an interface an address and netmask.
pub fn set_address(name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq_with_name(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(ip);
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &mut req)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
    let mut req = ifreq_with_name(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &mut req)
}

/// Set an interface's MTU.
pub fn set_mtu(name: &str, mtu: u16) -> io::Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq_with_name(name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ifreq_ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req)
}

/// Add a default route through `gateway`.
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let sock = control_socket()?;
    // SAFETY: rtentry is plain data; all-zero is valid (no device, no flags).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    // SAFETY: SIOCADDRT reads one struct rtentry from the pointer, which points at `rt` (rt_dev is null: the kernel picks the interface).
    match check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &mut rt as *mut libc::rtentry) }) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Whether `path` is on the same filesystem as `dev` (for freeing the
/// initramfs without crossing into the new root).
pub fn same_device(path: &Path, dev: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| m.dev() == dev).unwrap_or(false)
}

pub fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is one int on this stack frame and its size is passed alongside.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

// --- generic netlink socket --------------------------------------------

fn sockaddr_nl() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; zero is "the kernel, no groups".
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a
}

/// A generic netlink socket bound to a kernel-assigned port.
pub fn netlink_socket() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: socket() takes no pointers; ownership of the fd passes to OwnedFd.
    let fd = check(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_GENERIC) })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let addr = sockaddr_nl();
    // SAFETY: bind reads a sockaddr_nl of the given size from `addr`.
    check(unsafe {
        libc::bind(
            fd,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(owned)
}

pub fn netlink_send(fd: RawFd, msg: &[u8]) -> io::Result<()> {
    let addr = sockaddr_nl();
    // SAFETY: `msg` is a live slice of the given length; `addr` is a valid sockaddr_nl for the whole call.
    let n = unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn netlink_recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Subscribe to a generic netlink multicast group.
pub fn netlink_join(fd: RawFd, group: u32) -> io::Result<()> {
    const SOL_NETLINK: libc::c_int = 270;
    const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
    setsockopt_int(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group as libc::c_int)
}

/// SO_BINDTODEVICE: send and receive only through interface `name`.
pub fn bind_to_device(fd: RawFd, name: &str) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: the option value is the NUL-terminated name in `n`, with its length (including the NUL) passed alongside.
    check(unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, n.as_ptr().cast(), n.as_bytes_with_nul().len() as libc::socklen_t)
    })?;
    Ok(())
}

/// SO_BINDTOIFINDEX (Linux 5.0): like SO_BINDTODEVICE, by the interface's
/// index, which a rename (udev's, in the root) does not change.
pub fn bind_to_ifindex(fd: RawFd, index: u32) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX, index as libc::c_int)
}

/// What to do after disconnecting the root device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finally {
    PowerOff,
    Reboot,
    Halt,
}

/// reboot(2): end the machine. Everything must already be synced.
pub fn reboot(how: Finally) -> io::Error {
    let cmd = match how {
        Finally::PowerOff => libc::RB_POWER_OFF,
        Finally::Reboot => libc::RB_AUTOBOOT,
        Finally::Halt => libc::RB_HALT_SYSTEM,
    };
    // SAFETY: reboot takes an integer command; on success it does not return.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}
