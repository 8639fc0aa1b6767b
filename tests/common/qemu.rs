//! The QEMU client of the boot tests: one builder for every machine a test
//! boots (firmware, NIC, MAC, tap, CPUs, a kernel or the network), and one
//! result, the console's lines, whether QEMU exited by itself, and the log
//! of the pxeroot it booted beside (printed with the console when a boot
//! times out: what the server saw is half of the story).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::netns::{Netns, Proc};
use super::require;

/// A TCG boot reaches /init in about 7 s here; the whole test boot is well
/// under a minute.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The test client's MAC, unless a test gives another.
pub const CLIENT_MAC: &str = "52:54:00:b0:07:01";

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// What the machine starts.
pub enum Firmware {
    /// x86 `pc` with SeaBIOS (its NIC's iPXE ROM for network boots).
    Bios,
    /// x86 `q35` with OVMF, `vars` its variable store.
    Ovmf { vars: PathBuf },
    /// ARM64 `virt` with AAVMF, `vars` its variable store.
    Aavmf { vars: PathBuf },
}

/// One boot: the console's lines (each stamped with the seconds since QEMU
/// started), whether QEMU exited by itself, and the server's log then.
pub struct Booted {
    pub lines: Vec<String>,
    pub exited: bool,
    pub server_log: String,
}

impl Booted {
    pub fn console(&self) -> String {
        self.lines.join("\n")
    }
}

/// A client machine on a tap in `ns`, built up, then [`Client::run`].
pub struct Client<'a> {
    ns: &'a Netns,
    firmware: Firmware,
    nic: String,
    mac: String,
    tap: String,
    smp: u32,
    args: Vec<String>,
    server_log: Option<PathBuf>,
}

impl<'a> Client<'a> {
    /// BIOS, one CPU, virtio-net with [`CLIENT_MAC`] on `tap0`, booting
    /// nothing yet.
    pub fn new(ns: &'a Netns) -> Client<'a> {
        Client {
            ns,
            firmware: Firmware::Bios,
            nic: "virtio-net-pci".into(),
            mac: CLIENT_MAC.into(),
            tap: "tap0".into(),
            smp: 1,
            args: Vec::new(),
            server_log: None,
        }
    }

    pub fn firmware(mut self, firmware: Firmware) -> Self {
        self.firmware = firmware;
        self
    }

    /// The NIC's QEMU `-device` model and options (`e1000e`,
    /// `virtio-net-pci,romfile=` for the firmware's own network boot).
    pub fn nic(mut self, nic: &str) -> Self {
        self.nic = nic.into();
        self
    }

    pub fn mac(mut self, mac: &str) -> Self {
        self.mac = mac.into();
        self
    }

    pub fn tap(mut self, tap: &str) -> Self {
        self.tap = tap.into();
        self
    }

    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus;
        self
    }

    /// Boot `kernel` and `initrd` with `cmdline` directly.
    pub fn kernel(self, kernel: &Path, initrd: &Path, cmdline: &str) -> Self {
        let (k, i) = (kernel.display().to_string(), initrd.display().to_string());
        self.args(&["-kernel", &k, "-initrd", &i, "-append", cmdline])
    }

    /// Boot from the network (BIOS: the NIC's ROM).
    pub fn network(self) -> Self {
        self.args(&["-boot", "order=n"])
    }

    /// More QEMU arguments (a monitor socket, ...).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The log of the pxeroot this client boots from.
    pub fn beside(mut self, server_log: &Path) -> Self {
        self.server_log = Some(server_log.to_path_buf());
        self
    }

    /// Boot until QEMU exits or a console line makes `stop_when` true
    /// (QEMU is killed then); panics with the console and the server's log
    /// after [`BOOT_TIMEOUT`].
    pub fn run(self, stop_when: impl FnMut(&str) -> bool) -> Booted {
        let system = match self.firmware {
            Firmware::Aavmf { .. } => "qemu-system-aarch64",
            _ => "qemu-system-x86_64",
        };
        require(system);
        let mut c = self.ns.command(Path::new(system));
        c.args(["-accel", "tcg", "-nodefaults", "-display", "none"]);
        let pflash = |code: &str, vars: &Path| {
            [
                "-drive".to_string(),
                format!("if=pflash,format=raw,readonly=on,file={code}"),
                "-drive".into(),
                format!("if=pflash,format=raw,file={}", vars.display()),
            ]
        };
        match &self.firmware {
            Firmware::Bios => c.args(["-machine", "pc,graphics=off", "-m", "256", "-vga", "none"]),
            Firmware::Ovmf { vars } => c.args(["-machine", "q35,graphics=off", "-m", "256", "-vga", "none"]).args(pflash(OVMF_CODE, vars)),
            Firmware::Aavmf { vars } => c.args(["-machine", "virt", "-cpu", "cortex-a57", "-m", "512"]).args(pflash(AAVMF_CODE, vars)),
        };
        c.args(["-smp", &self.smp.to_string(), "-no-reboot", "-serial", "stdio"])
            .args(&self.args)
            .args(["-netdev", &format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap)])
            .args(["-device", &format!("{},netdev=n0,mac={}", self.nic, self.mac)]);
        watch(c, self.server_log.as_deref(), stop_when)
    }
}

/// Start QEMU (its serial console on stdout) and collect the console's
/// lines until QEMU exits or `stop_when` says stop.
fn watch(mut c: Command, server_log: Option<&Path>, mut stop_when: impl FnMut(&str) -> bool) -> Booted {
    let read_log = || server_log.map(|p| std::fs::read_to_string(p).unwrap_or_default());
    c.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
    let mut qemu = Proc(c.spawn().expect("start qemu"));
    let out = qemu.0.stdout.take().expect("qemu stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let deadline = started + BOOT_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let stop = stop_when(&l);
                // Host-side time since QEMU started: the boot's timeline.
                lines.push(format!("[{:6.2}] {l}", started.elapsed().as_secs_f64()));
                if stop {
                    return Booted { lines, exited: false, server_log: read_log().unwrap_or_default() };
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = qemu.0.wait();
                return Booted { lines, exited: true, server_log: read_log().unwrap_or_default() };
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() > deadline {
            panic!(
                "boot did not finish within {BOOT_TIMEOUT:?}; console:\n{}\n--- pxeroot log:\n{}",
                lines.join("\n"),
                read_log().as_deref().unwrap_or("(no server beside this client)")
            );
        }
    }
}
