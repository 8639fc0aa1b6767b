//! The one place storage talks to the kernel beyond plain file I/O: qemu's
//! image locking protocol with OFD locks (`fcntl(F_OFD_SETLK)`).
//!
//! QEMU locks byte `100 + i` to say "I hold permission i" and byte `200 + i`
//! to say "I do not share permission i" (i = 0 consistent read, 1 write,
//! 3 resize). Before taking a permission it tests whether anyone locked
//! "does not share" for it, and the other way round. Taking the same bytes
//! makes `qemu-img commit` refuse a live overlay (and a base that overlays
//! read), while `qemu-img info -U` still works.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

const PERM_CONSISTENT_READ: i64 = 0;
const PERM_WRITE: i64 = 1;
const PERM_RESIZE: i64 = 3;
const LOCK_PERM_BASE: i64 = 100;
const LOCK_SHARED_BASE: i64 = 200;

fn flock(kind: libc::c_int, byte: i64) -> libc::flock {
    libc::flock { l_type: kind as libc::c_short, l_whence: libc::SEEK_SET as libc::c_short, l_start: byte, l_len: 1, l_pid: 0 }
}

fn lock_byte(file: &File, byte: i64) -> io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte);
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)).map_err(io::Error::from)?;
    Ok(())
}

/// Whether another open file description holds a lock on `byte`.
fn byte_is_locked(file: &File, byte: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte);
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut fl)).map_err(io::Error::from)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// A base: we read it and nobody may write it while we serve it.
pub fn lock_shared_read(file: &File) -> io::Result<()> {
    if byte_is_locked(file, LOCK_PERM_BASE + PERM_WRITE)? {
        return Err(io::Error::new(io::ErrorKind::WouldBlock, "another process writes this image"));
    }
    lock_byte(file, LOCK_PERM_BASE + PERM_CONSISTENT_READ)?;
    lock_byte(file, LOCK_SHARED_BASE + PERM_WRITE)
}

/// An overlay: we read and write it, and share neither write nor resize.
pub fn lock_exclusive_write(file: &File) -> io::Result<()> {
    for byte in
        [LOCK_PERM_BASE + PERM_WRITE, LOCK_PERM_BASE + PERM_RESIZE, LOCK_SHARED_BASE + PERM_WRITE, LOCK_SHARED_BASE + PERM_CONSISTENT_READ]
    {
        if byte_is_locked(file, byte)? {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "image is locked by another process"));
        }
    }
    for byte in
        [LOCK_PERM_BASE + PERM_CONSISTENT_READ, LOCK_PERM_BASE + PERM_WRITE, LOCK_SHARED_BASE + PERM_WRITE, LOCK_SHARED_BASE + PERM_RESIZE]
    {
        lock_byte(file, byte)?;
    }
    Ok(())
}

/// Give `[off, off + len)` of `file` disk blocks (reading as zeros), growing
/// the file if needed but never shrinking it.
pub fn allocate(file: &File, off: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(file.as_raw_fd(), FallocateFlags::empty(), off as i64, len as i64).map_err(io::Error::from)
}

/// Give back the disk blocks of `[off, off + len)` (reads return zeros),
/// keeping the file's size.
pub fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file.as_raw_fd(), flags, off as i64, len as i64).map_err(io::Error::from)
}
