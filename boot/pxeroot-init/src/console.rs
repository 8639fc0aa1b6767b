//! The console: every line pxeroot-init prints, with the time since /init
//! started, and the one FATAL line after which it stays quiet; the helpers'
//! lines to the kernel log once the console is the root's.

use std::fmt::Display;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Instant;

use crate::error::InitError;
use crate::sys;

#[derive(Clone, Copy)]
pub(crate) struct Console {
    pub(crate) start: Instant,
}

/// Set once a thread has given up: the console then stays quiet, so the
/// FATAL message is the last thing on it, not scrolled away by another
/// thread's retries.
pub(crate) static GAVE_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Console {
    pub(crate) fn say(&self, msg: impl Display) {
        if !GAVE_UP.load(std::sync::atomic::Ordering::Relaxed) {
            self.print(msg);
        }
    }

    pub(crate) fn print(&self, msg: impl Display) {
        let t = self.start.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "pxeroot-init [{t:7.3}] {msg}");
        let _ = out.flush();
    }

    /// Run a step and print how long it took.
    pub(crate) fn step<T, E: Into<InitError>>(&self, what: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, InitError> {
        let t = Instant::now();
        match f() {
            Ok(v) => {
                self.say(format_args!("{what}: ok ({:.3} s)", t.elapsed().as_secs_f64()));
                Ok(v)
            }
            Err(e) => Err(e.into().within(format_args!("{what} failed"))),
        }
    }

    /// Nothing more can be tried: say so and stay alive.
    pub(crate) fn give_up(&self, msg: &dyn Display) -> ! {
        if !GAVE_UP.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.print(format_args!("FATAL: {msg}"));
            self.print("pxeroot-init cannot continue; the machine stays up so this message stays readable");
        }
        sys::halt_forever()
    }
}

/// The kernel log's device (char 1:11).
pub(crate) const KMSG: &str = "/dev/kmsg";

/// The level of the helpers' lines in the kernel log: notice, below the
/// threshold of a `quiet` console (4), which has them once, from stderr.
pub(crate) const KMSG_LEVEL: u8 = 5;

/// A line from a helper that outlives /init (`@pxeroot-nbd`, `@pxeroot-dhcp`):
/// on the console (stderr) and, when its stdout is /dev/kmsg, in the
/// kernel log too, where it outlasts the console (`dmesg`, `journalctl -k`
/// in a systemd root). One write per line: /dev/kmsg takes each write as
/// one record.
pub(crate) fn helper_say(tag: &str, msg: std::fmt::Arguments) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    static KMSG_OUT: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let line = format!("{tag}: {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let kmsg = KMSG_OUT.get_or_init(|| {
        let out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().ok()?);
        let m = out.metadata().ok()?;
        (m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 11)).then_some(out)
    });
    if let Some(mut k) = kmsg.as_ref() {
        let _ = k.write_all(format!("<{KMSG_LEVEL}>{line}").as_bytes());
    }
}
