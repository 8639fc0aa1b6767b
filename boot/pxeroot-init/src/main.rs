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

mod cmdline;
mod dhcp;
mod handoff;
mod lease;
mod nbd;
mod nbdnl;
mod netlink;
// The one module with `unsafe`: every block there has a SAFETY comment
// (clippy's undocumented_unsafe_blocks, run by tests/run-all).
#[allow(unsafe_code)]
mod sys;
mod tcpstate;

use std::fmt::Display;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cmdline::{Attach, NetConfig, RootRef, Settings};
use modlist::PATH as MODULE_LIST;

/// Mount point of the new root inside the initramfs.
const NEWROOT: &str = "/newroot";
/// argv[0] of the process that stays in NBD_DO_IT: the leading `@` tells
/// systemd it is a root storage daemon to spare at shutdown.
const KEEPER_ARGV0: &str = "@pxeroot-nbd";
const KEEPER_FLAG: &str = "--keep-nbd-device";
const MONITOR_FLAG: &str = "--monitor";
/// argv[0] of the process that keeps the DHCP lease (spared at shutdown
/// too: the address must last until the root is disconnected).
const LEASE_ARGV0: &str = "@pxeroot-dhcp";
const LEASE_FLAG: &str = "--keep-lease";
/// REQUESTs sent per attempt at extending the lease, each followed by a
/// wait of DHCP_REPLY_WAIT for the reply.
const RENEW_SENDS: u32 = 3;
/// The lease keeper checks the boot clock at least this often (seconds)
/// while it waits, so a suspend does not make it late.
const LEASE_CLOCK_STEP: u64 = 60;
/// Invoked under this name (a copy or link of this binary in the root
/// image, e.g. in /usr/lib/systemd/system-shutdown/), it disconnects
/// /dev/nbd0 cleanly: the kernel sends NBD's DISC to the server.
const DISCONNECT_NAME: &str = "pxeroot-disconnect";
/// How often to report that the interface or its carrier is still missing
/// (the wait itself goes on: a cable may be plugged in late).
const CARRIER_WAIT: Duration = Duration::from_secs(10);
/// Backoff between attempts to reach the server: doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A carrier slower than this is reported with its time (autonegotiation:
/// QEMU's e1000e takes 2.5 s after Linux resets its PHY, real NICs 1-3 s).
const SLOW_CARRIER: Duration = Duration::from_millis(500);
/// How long after link-up a switch port may forward nothing: STP's
/// listening and learning states (2 x 15 s forward delay) on a port that
/// is not an edge (portfast) port, with some margin.
const SWITCH_HOLD: Duration = Duration::from_secs(45);
/// How long pxeroot-disconnect waits for the server to close the NBD
/// connection after the DISC before it powers off anyway.
const DISC_WAIT: Duration = Duration::from_secs(2);
/// How long the root's partition may take to appear once the kernel reads
/// the partition table (milliseconds under TCG).
const PARTITION_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct Console {
    start: Instant,
}

/// Set once a thread has given up: the console then stays quiet, so the
/// FATAL message is the last thing on it, not scrolled away by another
/// thread's retries.
static GAVE_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Console {
    fn say(&self, msg: impl Display) {
        if !GAVE_UP.load(std::sync::atomic::Ordering::Relaxed) {
            self.print(msg);
        }
    }

    fn print(&self, msg: impl Display) {
        let t = self.start.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "pxeroot-init [{t:7.3}] {msg}");
        let _ = out.flush();
    }

    /// Run a step and print how long it took.
    fn step<T, E: Display>(&self, what: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
        let t = Instant::now();
        match f() {
            Ok(v) => {
                self.say(format_args!("{what}: ok ({:.3} s)", t.elapsed().as_secs_f64()));
                Ok(v)
            }
            Err(e) => Err(format!("{what} failed: {e}")),
        }
    }

    /// Nothing more can be tried: say so and stay alive.
    fn give_up(&self, msg: &str) -> ! {
        if !GAVE_UP.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.print(format_args!("FATAL: {msg}"));
            self.print("pxeroot-init cannot continue; the machine stays up so this message stays readable");
        }
        sys::halt_forever()
    }
}

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

fn boot(con: &Console) -> Result<(), String> {
    con.step("mount /proc, /sys, /dev", mount_early)?;
    let text = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let settings = cmdline::parse(&text).map_err(|e| e.to_string())?;
    if settings.debug {
        con.say(format_args!("settings: {settings:?}"));
    }
    let modules = Modules::open(&text, settings.debug)?;
    // With a second CPU, the root's modules (the filesystem, nbd) load from
    // /init's start beside the NIC drivers, on the CPUs the drivers leave
    // (one: one group after the other; more: groups side by side); with
    // one CPU they load after the drivers, beside the network's round
    // trips, so the network comes up as early as it can.
    let spare = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let netlink = settings.attach == Attach::Netlink;
    let (export, net, genl, nic) = std::thread::scope(|scope| -> Result<_, String> {
        // A module the kernel refuses ends the boot at once, whatever the
        // network is doing (it may retry DHCP forever). Once nbd is loaded
        // its netlink family exists: open the attach's sockets here, beside
        // the network, not after it.
        let load_rest = |threads| {
            con.step("load the root's modules", || modules.load_rest(con, threads)).unwrap_or_else(|e| con.give_up(&e));
            netlink.then(NetlinkAttach::open)
        };
        let early = (spare > 0).then(|| scope.spawn(move || load_rest(spare)));
        let drivers = con.step("load NIC drivers", || modules.load_drivers(con))?;
        if drivers.fallback > 0 {
            con.say(format_args!(
                "no network interface from the driver groups that matched a device: loaded the {} others too",
                drivers.fallback
            ));
        }
        con.say(format_args!("{} driver modules loaded ({} driver groups without a device skipped)", drivers.loaded, drivers.skipped));
        let (iface, mac) = con.step("find the boot interface", || find_interface(con, &settings))?;
        con.say(format_args!("boot interface {iface} ({})", mac_text(&mac)));
        let export = settings.export.clone().unwrap_or_else(|| mac_text(&mac));
        let nic = (iface.clone(), mac);
        // The network comes up and the NBD handshake runs while the root's
        // modules load: under TCG that overlaps 0.3 s of module loading
        // with the carrier wait and the server's round trips.
        let (settings, name) = (&settings, export.clone());
        let net = scope.spawn(move || -> Result<_, String> {
            let (link_up, held, services, inform) =
                con.step(&format!("configure {iface}"), || configure_net(con, settings, &iface, mac))?;
            let keeper = match held {
                Some(held) => Some(lease::KeeperArgs { ifindex: ifindex(&iface)?, mac, held, debug: settings.debug }),
                None => None,
            };
            Ok((connect_with_retry(con, settings, &name, link_up), keeper, services, inform))
        });
        let genl = match early {
            Some(h) => h.join().map_err(|_| "the module thread panicked".to_string())?,
            None => load_rest(1),
        };
        Ok((export, net.join(), genl, nic))
    })?;
    con.say(format_args!("{} modules loaded", modules.loaded()));
    let ((sock, info), keeper, services, inform) = net.map_err(|_| "the network thread panicked".to_string())??;
    match (&keeper, settings.lease) {
        (Some(k), _) => {
            let h = &k.held;
            let from = h.server.map_or("an unnamed server".to_string(), |s| s.to_string());
            con.say(format_args!(
                "DHCP lease of {} from {from}: {} s; {LEASE_ARGV0} renews it {} s after boot",
                h.address,
                h.secs,
                h.renew_at()
            ));
        }
        (None, Some(hint)) if hint.secs != Some(dhcp::INFINITE) => con.say(
            "pxeroot.lease= names no lease time: the address's DHCP lease is not renewed (it may be given to another machine when it ends)",
        ),
        _ => {}
    }
    con.say(format_args!("export {export}: {} bytes, flags 0x{:x}", info.size, info.flags));
    // The address came from DHCP when pxeroot-init leased it or iPXE's
    // script says it did.
    let leased = match (&keeper, &settings.net) {
        (Some(k), _) => Some(k.held.address),
        (None, NetConfig::Static(st)) if settings.lease.is_some() => Some(st.client),
        _ => None,
    };
    let mut nic = handoff::BootNic { name: nic.0, mac: nic.1, leased, services };
    let monitor = match genl {
        Some(genl) => Some(con.step("attach /dev/nbd0 (netlink)", || attach_netlink(&settings, &export, genl?, sock, info))?),
        None => {
            con.step("attach /dev/nbd0 (ioctl)", || attach_ioctl(&settings, sock, info))?;
            // The kernel drops an NBD_DO_IT connection when its process is
            // stopped, and systemd's shutdown stops every process.
            con.say("ioctl attach: the root dies if @pxeroot-nbd is ever stopped (systemd's shutdown does): prefer pxeroot.attach=netlink");
            None
        }
    };
    // On another thread while this one mounts the root (it waits on the
    // server): start the netlink monitor (its spawn took 8 ms under TCG),
    // read the INFORM's answer (it came during the handshake, or is
    // waited for until its deadline, long past by the mount's end) and
    // close its socket before the lease keeper binds port 68, then free
    // the module files' memory (deleting the initramfs's 6 MB took 17 ms).
    // Joined before the hand-off and the switch: an exec must not meet a
    // spawn half done.
    let (c, iface) = (*con, nic.name.clone());
    let after_attach = std::thread::spawn(move || {
        let started = monitor.map_or(Ok(()), |m| spawn_helper("NBD monitor", KEEPER_ARGV0, &m.argv));
        let answered = inform.map(|asked| asked.answer(&c, &iface));
        let started = started.and(keeper.map_or(Ok(()), |k| {
            let mut argv = vec![LEASE_FLAG.to_string()];
            argv.extend(k.to_args());
            spawn_helper("DHCP lease keeper", LEASE_ARGV0, &argv)
        }));
        for path in modules.files() {
            let _ = std::fs::remove_file(path);
        }
        started.map(|()| answered)
    });
    let partition = match settings.partition {
        Some(n) => Some(n),
        None => find_root_partition(con, &settings)?,
    };
    let device = root_device(partition);
    if let Some(n) = partition {
        con.step(&format!("find partition {n} ({device})"), || wait_for_partition(n))?;
    }
    let fstype = match &settings.fstype {
        Some(t) => t.clone(),
        None => root_fstype(&device).unwrap_or_else(|| DEFAULT_FSTYPE.to_string()),
    };
    con.step(&format!("mount {device} ({fstype}) on {NEWROOT}"), || mount_root(&settings, &fstype, partition, &device))?;
    let answered = after_attach.join().map_err(|_| "the thread after the attach panicked".to_string())??;
    if let Some(more) = answered {
        nic.services = nic.services.or(more);
    }
    say_services(con, &nic.name, &nic.services);
    if settings.handoff {
        hand_off_network(con, &nic);
    }
    con.say(format_args!("switching root, exec {}", settings.init));
    let err = switch_root(&settings);
    Err(format!("switch_root failed: {err}"))
}

fn mount_early() -> std::io::Result<()> {
    for (dir, fs) in [("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs")] {
        std::fs::create_dir_all(dir)?;
        if let Err(e) = sys::mount(fs, dir, fs, 0, "") {
            // EBUSY: already mounted (the kernel may mount devtmpfs itself).
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(e);
            }
        }
    }
    // devtmpfs makes these; an initramfs without devtmpfs needs them made.
    sys::mknod("/dev/console", sys::S_IFCHR | 0o600, 5, 1)?;
    sys::mknod("/dev/null", sys::S_IFCHR | 0o666, 1, 3)?;
    Ok(())
}

/// How far one module file got, shared by the threads that load modules.
enum Load {
    Loading,
    Done,
    Failed(String),
}

/// What `load_drivers` did.
struct Drivers {
    /// Modules it loaded.
    loaded: usize,
    /// Driver groups left unloaded: no device matched.
    skipped: usize,
    /// Driver groups loaded although no device matched, because none of
    /// the matching ones gave a network interface.
    fallback: usize,
}

/// The module list's groups and how far each module got. Drivers first
/// (`load_drivers`), so the network can come up while the rest
/// (`load_rest`: nbd, the filesystem) loads; with several CPUs the rest
/// loads beside the drivers too.
struct Modules {
    groups: Vec<modlist::Group>,
    state: std::sync::Mutex<std::collections::HashMap<String, Load>>,
    changed: std::sync::Condvar,
    cmdline: String,
    /// `pxeroot.debug`: print each module's load time.
    debug: bool,
}

impl Modules {
    fn open(cmdline: &str, debug: bool) -> Result<Modules, String> {
        let groups = match std::fs::read_to_string(MODULE_LIST) {
            Ok(text) => modlist::parse(&text).map_err(|e| format!("{MODULE_LIST}: {e}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("reading {MODULE_LIST}: {e}")),
        };
        Ok(Modules { groups, state: Default::default(), changed: Default::default(), cmdline: cmdline.to_string(), debug })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Load>> {
        // A poisoned lock only means another loading thread panicked: the
        // map itself is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Load one module unless it is loaded; if another thread is loading
    /// it, wait for that. True when this call loaded it. An optional
    /// module's failure is said and taken as not loaded.
    fn load(&self, con: &Console, m: &modlist::Module) -> Result<bool, String> {
        let mut state = self.lock();
        loop {
            match state.get(&m.path) {
                None => break,
                Some(Load::Done) => return Ok(false),
                // Reported by the thread that tried it.
                Some(Load::Failed(_)) if m.optional => return Ok(false),
                Some(Load::Failed(e)) => return Err(e.clone()),
                Some(Load::Loading) => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
        state.insert(m.path.clone(), Load::Loading);
        drop(state);
        let params = modlist::params_for(m, &self.cmdline);
        let started = Instant::now();
        let result = std::fs::File::open(&m.path).map_err(|e| format!("opening module {}: {e}", m.path)).and_then(|f| {
            sys::finit_module(&f, &params).map_err(|e| {
                let with = if params.is_empty() { String::new() } else { format!(" with {params}") };
                format!("loading module {}{with}: {e} (is it built for this kernel?)", m.path)
            })
        });
        if self.debug {
            con.say(format_args!("finit_module {}: {:.3} s", m.path, started.elapsed().as_secs_f64()));
        }
        let done = match &result {
            Ok(()) => Load::Done,
            Err(e) => Load::Failed(e.clone()),
        };
        self.lock().insert(m.path.clone(), done);
        self.changed.notify_all();
        match result {
            Ok(()) => Ok(true),
            // As modprobe does for a soft dependency: a CPU-specific module
            // the kernel refuses (ENODEV) must not stop the boot; what
            // wanted it fails later, and says why, if it truly needed it.
            Err(e) if m.optional => {
                con.say(format_args!("{e}; only soft dependencies want it: going on without it"));
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Load a group's modules in order; how many this call loaded.
    fn load_group(&self, con: &Console, i: usize) -> Result<usize, String> {
        let mut n = 0;
        for m in &self.groups[i].modules {
            n += usize::from(self.load(con, m)?);
        }
        Ok(n)
    }

    /// Modules loaded so far, by any thread.
    fn loaded(&self) -> usize {
        self.lock().values().filter(|l| matches!(l, Load::Done)).count()
    }

    /// Each driver group whose device is there, checked when the group's
    /// turn comes (so a bus driver loaded earlier, virtio_pci, has
    /// registered its devices). If that leaves the machine without a
    /// network interface, load the skipped groups too: an alias this code
    /// misreads must cost time, not the boot.
    fn load_drivers(&self, con: &Console) -> Result<Drivers, String> {
        let mut done = Drivers { loaded: 0, skipped: 0, fallback: 0 };
        let (mut aliases, mut stale, mut waiting) = (Vec::new(), true, Vec::new());
        let buses = modlist::buses(&self.groups);
        for i in 0..self.groups.len() {
            if self.groups[i].when.is_empty() {
                continue;
            }
            if stale {
                aliases = device_modaliases(buses.as_deref());
                stale = false;
            }
            if modlist::wanted(&self.groups[i], &aliases) {
                done.loaded += self.load_group(con, i)?;
                stale = true;
            } else {
                waiting.push(i);
            }
        }
        done.skipped = waiting.len();
        if done.skipped > 0 && interfaces().map_or(true, |n| n.is_empty()) {
            for i in waiting {
                done.loaded += self.load_group(con, i)?;
            }
            done.fallback = std::mem::take(&mut done.skipped);
        }
        Ok(done)
    }

    /// The groups that always load, in the list's order, on `threads`
    /// threads (one: this one, one group after the other). A module two
    /// groups share loads once, the second group waiting for it. How many
    /// modules this call loaded.
    ///
    /// Side by side is not always faster: with two CPUs, the NIC drivers'
    /// thread and one thread for these (the filesystem first, nbd after)
    /// reached "NBD attached" 20 ms sooner under TCG than a thread per group,
    /// which took CPU from the drivers that the network waits on.
    fn load_rest(&self, con: &Console, threads: usize) -> Result<usize, String> {
        let always: Vec<usize> = (0..self.groups.len()).filter(|&i| self.groups[i].when.is_empty()).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let worker = || -> Result<usize, String> {
            let mut n = 0;
            while let Some(&i) = always.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                n += self.load_group(con, i)?;
            }
            Ok(n)
        };
        if threads < 2 || always.len() < 2 {
            return worker();
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.min(always.len())).map(|_| scope.spawn(worker)).collect();
            workers.into_iter().map(|t| t.join().map_err(|_| "a module thread panicked".to_string())?).sum()
        })
    }

    /// Every module file the list names, loaded or not.
    fn files(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().flat_map(|g| &g.modules).map(|m| m.path.as_str())
    }
}

/// Network interfaces other than lo, sorted.
fn interfaces() -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> =
        std::fs::read_dir("/sys/class/net")?.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n != "lo").collect();
    names.sort();
    Ok(names)
}

/// The modaliases of the devices on `buses` (`/sys/bus/BUS/devices/*/modalias`),
/// or on every bus when `None`. A bus not registered yet has no devices.
fn device_modaliases(buses: Option<&[String]>) -> Vec<String> {
    let mut out = Vec::new();
    let dirs: Vec<PathBuf> = match buses {
        Some(names) => names.iter().map(|b| Path::new("/sys/bus").join(b)).collect(),
        None => match std::fs::read_dir("/sys/bus") {
            Ok(d) => d.flatten().map(|e| e.path()).collect(),
            Err(_) => return out,
        },
    };
    for bus in dirs {
        let Ok(devices) = std::fs::read_dir(bus.join("devices")) else { continue };
        for dev in devices.flatten() {
            if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                out.push(a.trim().to_string());
            }
        }
    }
    out
}

fn read_mac(iface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(mac)
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The interface named by `ip=`, else the one whose MAC is `BOOTIF`, else
/// the first that is not loopback.
fn find_interface(con: &Console, s: &Settings) -> Result<(String, [u8; 6]), String> {
    let wanted = match &s.net {
        NetConfig::Static(st) => st.device.clone(),
        NetConfig::Dhcp { device } => device.clone(),
    };
    // NIC drivers probe asynchronously after their module loads: wait.
    let mut deadline = Instant::now() + CARRIER_WAIT;
    loop {
        let names = interfaces().map_err(|e| format!("listing /sys/class/net: {e}"))?;
        let pick = names.into_iter().find_map(|n| {
            let mac = read_mac(&n)?;
            let ok = match (&wanted, s.bootif) {
                (Some(w), _) => *w == n,
                (None, Some(b)) => b == mac,
                (None, None) => true,
            };
            ok.then_some((n, mac))
        });
        if let Some(p) = pick {
            return Ok(p);
        }
        if Instant::now() > deadline {
            // Keep waiting (a NIC may probe late), but say why every so often.
            con.say(format_args!(
                "no network interface matches yet (wanted {:?}, BOOTIF {:?}); still waiting: check that the NIC's driver is in the initramfs",
                wanted,
                s.bootif.map(|m| mac_text(&m))
            ));
            deadline = Instant::now() + CARRIER_WAIT;
        }
        std::thread::sleep(INTERFACE_POLL);
    }
}

/// Bring the interface up with its address; returns when the link came
/// up, the DHCP lease to keep (none for a static address without
/// `pxeroot.lease`, or an infinite lease), the DNS and NTP servers and
/// domain for the root, and the INFORM sent for what iPXE's lease lacks.
fn configure_net(
    con: &Console,
    s: &Settings,
    iface: &str,
    mac: [u8; 6],
) -> Result<(Instant, Option<lease::Held>, handoff::NetServices, Option<Inform>), String> {
    sys::link_up("lo").map_err(|e| format!("bringing up lo: {e}"))?;
    sys::link_up(iface).map_err(|e| format!("bringing up {iface}: {e}"))?;
    let given = handoff::NetServices { dns: s.dns.clone(), domain: s.domain.clone(), search: s.search.clone(), ntp: s.ntp.clone() };
    let (st, link_up, held, services, hostname, asked) = match &s.net {
        NetConfig::Static(st) => {
            // The address and route need no carrier: set them while the
            // link comes up. iPXE's lease was granted before the kernel
            // started: count it from boot (time 0).
            set_address(iface, st)?;
            set_mtu(con, iface, s.mtu, "pxeroot.mtu");
            let held = s.lease.and_then(|h| lease::Held::new(st.client, h.server, 0, h.secs?, h.t1, h.t2));
            let up = wait_for_carrier(con, iface);
            // iPXE asks for no NTP servers (option 42): ask the server
            // that leased the address, as the address's owner.
            let asked = match (s.lease.and_then(|h| h.server), s.ntp.is_empty()) {
                (Some(server), true) => Inform::send(iface, mac, st.client, server)
                    .map_err(|e| con.say(format_args!("{iface}: no DHCPINFORM to {server}: {e}; the root gets no NTP servers from DHCP")))
                    .ok(),
                _ => None,
            };
            (st.clone(), up, held, given, s.hostname.clone(), asked)
        }
        NetConfig::Dhcp { .. } => {
            let up = wait_for_carrier(con, iface);
            let (l, sent) = dhcp_with_retry(con, iface, mac);
            let st = cmdline::StaticIp { client: l.address, gateway: l.router, prefix: l.prefix, device: None };
            set_address(iface, &st)?;
            set_mtu(con, iface, l.mtu, "DHCP option 26");
            let held = l.lease_secs.and_then(|secs| lease::Held::new(l.address, l.server_id, sent, secs, l.renew_secs, l.rebind_secs));
            // The lease's own, where it has them.
            let services = handoff::NetServices::from_reply(&l).or(given);
            (st, up, held, services, l.hostname.or_else(|| s.hostname.clone()), None)
        }
    };
    if let Some(name) = hostname {
        set_hostname(con, &name);
    }
    con.say(format_args!("{iface}: {}/{} gateway {:?}", st.client, st.prefix, st.gateway));
    Ok((link_up, held, services, asked))
}

/// The root's DNS and NTP servers, on the console.
fn say_services(con: &Console, iface: &str, services: &handoff::NetServices) {
    if !services.dns.is_empty() {
        let domain = services.domain.as_deref().map(|d| format!(", domain {d}")).unwrap_or_default();
        let search = match services.search.is_empty() {
            true => String::new(),
            false => format!(", search {}", services.search.join(" ")),
        };
        con.say(format_args!("{iface}: DNS {}{domain}{search} (for the root)", handoff::joined(&services.dns, " ")));
    }
    if !services.ntp.is_empty() {
        con.say(format_args!("{iface}: NTP {} (for the root)", handoff::joined(&services.ntp, " ")));
    }
}

/// How long the answer to a DHCPINFORM is waited for, from its sending.
/// It is sent before the NBD handshake and read after the attach, beside
/// the mount: an answer within that costs the boot nothing, and so does
/// a server that never answers unless the root mounts sooner than this.
const INFORM_WAIT: Duration = Duration::from_millis(250);

/// A DHCPINFORM on its way (`dhcp::inform`): unicast to the server that
/// leased the address, its answer read by `answer`.
struct Inform {
    sock: std::net::UdpSocket,
    xid: u32,
    mac: [u8; 6],
    server: std::net::Ipv4Addr,
    sent: Instant,
}

impl Inform {
    fn send(iface: &str, mac: [u8; 6], address: std::net::Ipv4Addr, server: std::net::Ipv4Addr) -> Result<Inform, String> {
        let sock = dhcp_socket(Via::Name(iface)).map_err(|e| format!("opening UDP port 68 on {iface}: {e}"))?;
        let xid = new_xid(mac, 0);
        sock.send_to(&dhcp::inform(xid, mac, address), (server, 67)).map_err(|e| format!("sending it: {e}"))?;
        Ok(Inform { sock, xid, mac, server, sent: Instant::now() })
    }

    /// What the server's ACK names; nothing when it said NAK or did not
    /// answer within `INFORM_WAIT` of the sending (said on the console).
    fn answer(self, con: &Console, iface: &str) -> handoff::NetServices {
        let reply = await_reply(&self.sock, self.xid, self.mac, dhcp::ACK, self.sent + INFORM_WAIT);
        informed(reply, self.server).unwrap_or_else(|why| {
            con.say(format_args!("{iface}: {why}: the root gets no NTP servers from DHCP"));
            handoff::NetServices::default()
        })
    }
}

/// What the answer to a DHCPINFORM (`await_reply`'s: an ACK, a NAK or
/// none) gives the root, or why it gives nothing.
fn informed(reply: Option<dhcp::Lease>, server: std::net::Ipv4Addr) -> Result<handoff::NetServices, String> {
    match reply {
        Some(ack) if ack.message_type == dhcp::ACK => Ok(handoff::NetServices::from_reply(&ack)),
        Some(_) => Err(format!("{server} answered the DHCPINFORM with a NAK")),
        None => Err(format!("no answer to DHCPINFORM from {server} within {INFORM_WAIT:?}")),
    }
}

/// The kernel's hostname, from DHCP option 12 (validated by
/// `dhcp::host_name`): a root without a static one (an empty
/// `/etc/hostname`) keeps it, so every client of one base has its own.
fn set_hostname(con: &Console, name: &str) {
    match std::fs::write("/proc/sys/kernel/hostname", name) {
        Ok(()) => con.say(format_args!("hostname {name}")),
        Err(e) => con.say(format_args!("cannot set the hostname {name}: {e}; going on without")),
    }
}

/// The segment's MTU, when it names one (`from`). A NIC that cannot take it
/// keeps its default, which still works where the segment's MTU is larger.
fn set_mtu(con: &Console, iface: &str, mtu: Option<u16>, from: &str) {
    let Some(m) = mtu else { return };
    match sys::set_mtu(iface, m) {
        Ok(()) => con.say(format_args!("{iface}: MTU {m} ({from})")),
        Err(e) => con.say(format_args!("{iface}: cannot set MTU {m} ({from}): {e}; going on with the NIC's default")),
    }
}

fn set_address(iface: &str, st: &cmdline::StaticIp) -> Result<(), String> {
    sys::set_address(iface, st.client, st.prefix).map_err(|e| format!("setting {}/{} on {iface}: {e}", st.client, st.prefix))?;
    if let Some(gw) = st.gateway {
        sys::add_default_route(gw).map_err(|e| format!("adding the default route via {gw}: {e}"))?;
    }
    Ok(())
}

/// How often `find_interface` lists the interfaces while a NIC probes.
const INTERFACE_POLL: Duration = Duration::from_millis(5);

/// How often `wait_for_carrier` looks: a virtio or e1000 link is up a few
/// milliseconds after the interface (a 20 ms step cost a TCG boot 20 ms).
const CARRIER_POLL: Duration = Duration::from_millis(2);

/// Wait for carrier, so the first packet is not dropped (a lost TCP SYN
/// costs a second); say so every `CARRIER_WAIT` while there is none.
/// When the carrier came.
fn wait_for_carrier(con: &Console, iface: &str) -> Instant {
    let started = Instant::now();
    let mut deadline = started + CARRIER_WAIT;
    while std::fs::read_to_string(format!("/sys/class/net/{iface}/carrier")).map(|c| c.trim() != "1").unwrap_or(true) {
        if Instant::now() > deadline {
            con.say(format_args!("{iface} has no carrier yet: is the cable (or tap) connected? still waiting"));
            deadline = Instant::now() + CARRIER_WAIT;
        }
        std::thread::sleep(CARRIER_POLL);
    }
    if started.elapsed() > SLOW_CARRIER {
        con.say(format_args!("{iface}: link up after {:.2} s (the NIC's autonegotiation)", started.elapsed().as_secs_f64()));
    }
    Instant::now()
}

/// How long one DHCP exchange waits for each reply.
const DHCP_REPLY_WAIT: Duration = Duration::from_secs(2);

/// DISCOVER, take the first OFFER, REQUEST it, wait for the ACK. Retried
/// forever with backoff: a DHCP server may be slow to come up. Returns the
/// lease, and when (boot clock) the exchange that got it started.
fn dhcp_with_retry(con: &Console, iface: &str, mac: [u8; 6]) -> (dhcp::Lease, u64) {
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 1u32;
    loop {
        let t = Instant::now();
        let sent = sys::boottime_secs();
        match dhcp_once(iface, mac, attempt) {
            Ok(l) => {
                con.say(format_args!("DHCP on {iface}: {} from {:?} ({:.3} s)", l.address, l.server_id, t.elapsed().as_secs_f64()));
                return (l, sent);
            }
            Err(e) => con.say(format_args!("DHCP on {iface} failed (attempt {attempt}): {e}; is a DHCP server on this segment? retrying")),
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

/// An interface's index (`/sys/class/net/IFACE/ifindex`).
fn ifindex(iface: &str) -> Result<u32, String> {
    let path = format!("/sys/class/net/{iface}/ifindex");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    text.trim().parse().map_err(|_| format!("{path}: {text:?} is not an interface index"))
}

/// The interface a DHCP socket sends and receives through.
enum Via<'a> {
    Name(&'a str),
    Index(u32),
}

/// A UDP socket on the DHCP client port of an interface, for broadcasts too.
fn dhcp_socket(via: Via) -> std::io::Result<std::net::UdpSocket> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:68")?;
    sock.set_broadcast(true)?;
    match via {
        Via::Name(name) => sys::bind_to_device(sock.as_raw_fd(), name)?,
        Via::Index(index) => sys::bind_to_ifindex(sock.as_raw_fd(), index)?,
    }
    sock.set_read_timeout(Some(DHCP_REPLY_WAIT))?;
    Ok(sock)
}

fn new_xid(mac: [u8; 6], attempt: u32) -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ attempt
}

/// The first reply for `xid` that is `kind` or a NAK, before `deadline`;
/// past it, one that has arrived already.
fn await_reply(sock: &std::net::UdpSocket, xid: u32, mac: [u8; 6], kind: u8, deadline: Instant) -> Option<dhcp::Lease> {
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // (A socket a past call left non-blocking blocks again here.)
        let waits = if left.is_zero() {
            sock.set_nonblocking(true)
        } else {
            sock.set_nonblocking(false).and_then(|()| sock.set_read_timeout(Some(left)))
        };
        waits.ok()?;
        // A timeout, or nothing more queued.
        let n = sock.recv(&mut buf).ok()?;
        match dhcp::parse_reply(&buf[..n], xid, mac) {
            Some(l) if l.message_type == kind || l.message_type == dhcp::NAK => return Some(l),
            _ => {}
        }
    }
}

fn dhcp_once(iface: &str, mac: [u8; 6], attempt: u32) -> Result<dhcp::Lease, String> {
    let sock = dhcp_socket(Via::Name(iface)).map_err(|e| format!("opening UDP port 68 on {iface}: {e}"))?;
    let xid = new_xid(mac, attempt);
    let to = "255.255.255.255:67";
    let wait_for = |kind: u8| -> Result<dhcp::Lease, String> {
        match await_reply(&sock, xid, mac, kind, Instant::now() + DHCP_REPLY_WAIT) {
            Some(l) if l.message_type == dhcp::NAK => Err("the server said NAK".into()),
            Some(l) => Ok(l),
            None => Err(format!("no {} within {DHCP_REPLY_WAIT:?}", if kind == dhcp::OFFER { "OFFER" } else { "ACK" })),
        }
    };
    sock.send_to(&dhcp::discover(xid, mac), to).map_err(|e| format!("sending DISCOVER: {e}"))?;
    let offer = wait_for(dhcp::OFFER)?;
    sock.send_to(&dhcp::request(xid, mac, &offer), to).map_err(|e| format!("sending REQUEST: {e}"))?;
    wait_for(dhcp::ACK)
}

/// The lease keeper: `@pxeroot-dhcp --keep-lease ARGS` (lease::KeeperArgs).
/// Renews at T1, rebinds at T2, and goes on asking past the lease's end:
/// the root stays on the address whatever the server says, so every
/// failure is said on the console with what it risks. Quiet while all is
/// well (each renewal is said with `pxeroot.debug`, or after a failure).
fn keep_lease(args: &[String]) -> ! {
    let say = |msg: std::fmt::Arguments| helper_say("pxeroot-dhcp", msg);
    let Some(k) = lease::KeeperArgs::parse(args) else {
        say(format_args!("bad arguments {args:?}"));
        std::process::exit(2);
    };
    if let Err(e) = sys::harden_root_keeper() {
        say(format_args!("hardening failed: {e}"));
    }
    let mut held = k.held;
    let (mut last_try, mut failures) = (None, 0u32);
    loop {
        let (when, ask) = lease::next(&held, last_try);
        // In steps: a sleep does not count time suspended, the lease does.
        loop {
            let now = sys::boottime_secs();
            if now >= when {
                break;
            }
            std::thread::sleep(Duration::from_secs((when - now).min(LEASE_CLOCK_STEP)));
        }
        let sent = sys::boottime_secs();
        let reply = match renew_once(k.ifindex, k.mac, held.address, ask, failures) {
            Ok(r) => Ok(r),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                say(format_args!(
                    "UDP port 68 is taken (a DHCP client in the root?): that client keeps the lease of {}; this one stops. \
                     It must send the client identifier 1:{} (ISC dhclient: `send dhcp-client-identifier = hardware;`), \
                     or the server takes it for another client and {} is renewed by nobody",
                    held.address,
                    mac_text(&k.mac),
                    held.address
                ));
                std::process::exit(0);
            }
            Err(e) => Err(format!("asking for the lease of {}: {e}", held.address)),
        };
        let why = match reply.map(|r| r.map(|r| lease::answered(&held, &r, sent))) {
            Err(e) => e,
            Ok(Some(Ok(Some(renewed)))) => {
                if k.debug || failures > 0 {
                    say(format_args!("lease of {} extended by {}: {} s, next renewal {} s after boot", renewed.address, renewed.server.map_or("?".into(), |s| s.to_string()), renewed.secs, renewed.renew_at()));
                }
                (held, last_try, failures) = (renewed, None, 0);
                continue;
            }
            Ok(Some(Ok(None))) => {
                say(format_args!("the lease of {} is now infinite: nothing more to keep", held.address));
                std::process::exit(0);
            }
            Ok(Some(Err(lease::Refused::Nak { server }))) => format!(
                "{} refused (NAK) to extend the lease of {}: it may give the address to another machine, which cuts this one's root off; reserve {} for {} on the DHCP server",
                server.map_or("a DHCP server".into(), |s| s.to_string()),
                held.address,
                held.address,
                mac_text(&k.mac)
            ),
            Ok(Some(Err(lease::Refused::Odd(what)))) => format!("the DHCP server sent {what}"),
            Ok(None) => format!("no DHCP server answered for the lease of {}", held.address),
        };
        failures += 1;
        last_try = Some(sent);
        let (again, _) = lease::next(&held, last_try);
        let left = held.ends_at() as i64 - sent as i64;
        let state = if left > 0 {
            format!("the lease ends in {left} s")
        } else {
            format!("the lease ended {} s ago and the root still uses the address", -left)
        };
        say(format_args!("{why}; {state}; asking again in {} s", again.saturating_sub(sent)));
    }
}

/// One attempt at extending the lease: up to RENEW_SENDS REQUESTs, to the
/// server (renewing) or broadcast (rebinding). `Ok(None)`: no reply.
fn renew_once(
    ifindex: u32,
    mac: [u8; 6],
    address: std::net::Ipv4Addr,
    ask: lease::Ask,
    attempt: u32,
) -> std::io::Result<Option<dhcp::Lease>> {
    let sock = dhcp_socket(Via::Index(ifindex))?;
    let to = match ask {
        lease::Ask::Renew(server) => std::net::SocketAddrV4::new(server, 67),
        lease::Ask::Rebind => std::net::SocketAddrV4::new(std::net::Ipv4Addr::BROADCAST, 67),
    };
    let xid = new_xid(mac, attempt);
    let request = dhcp::renew(xid, mac, address);
    for _ in 0..RENEW_SENDS {
        sock.send_to(&request, to)?;
        if let Some(reply) = await_reply(&sock, xid, mac, dhcp::ACK, Instant::now() + DHCP_REPLY_WAIT) {
            return Ok(Some(reply));
        }
    }
    Ok(None)
}

/// Reach the server and negotiate, forever, with backoff: a server that is
/// down or restarting, or an export not configured yet, may come good.
fn connect_with_retry(con: &Console, s: &Settings, export: &str, link_up: Instant) -> (std::net::TcpStream, nbd::Export) {
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let t = Instant::now();
        match nbd::connect(s.server, export) {
            Ok(r) => {
                con.say(format_args!("NBD connect to {} export {export}: ok ({:.3} s)", s.server, t.elapsed().as_secs_f64()));
                return r;
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

fn attach_ioctl(s: &Settings, sock: std::net::TcpStream, info: nbd::Export) -> Result<(), String> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/nbd0")
        .or_else(|_| {
            sys::mknod("/dev/nbd0", sys::S_IFBLK | 0o600, 43, 0)?;
            std::fs::OpenOptions::new().read(true).write(true).open("/dev/nbd0")
        })
        .map_err(|e| format!("opening /dev/nbd0: {e} (is nbd.ko in the initramfs?)"))?;
    let fd = dev.as_raw_fd();
    let io = |what: &str, r: std::io::Result<libc::c_int>| r.map(|_| ()).map_err(|e| format!("{what}: {e}"));
    io("NBD_SET_BLKSIZE", sys::ioctl_arg(fd, nbd::NBD_SET_BLKSIZE, nbd::BLOCK_SIZE as _))?;
    io("NBD_SET_SIZE", sys::ioctl_arg(fd, nbd::NBD_SET_SIZE, info.size as _))?;
    io("NBD_CLEAR_SOCK", sys::ioctl_arg(fd, nbd::NBD_CLEAR_SOCK, 0))?;
    io("NBD_SET_FLAGS", sys::ioctl_arg(fd, nbd::NBD_SET_FLAGS, info.flags as _))?;
    let ro = s.read_only || info.flags & nbd_wire::consts::TFLAG_READ_ONLY != 0;
    sys::set_block_read_only(fd, ro).map_err(|e| format!("BLKROSET: {e}"))?;
    io("NBD_SET_TIMEOUT", sys::ioctl_arg(fd, nbd::NBD_SET_TIMEOUT, s.timeout as _))?;
    io("NBD_SET_SOCK", sys::ioctl_arg(fd, nbd::NBD_SET_SOCK, sock.as_raw_fd() as _))?;
    // The keeper process sits in NBD_DO_IT for the life of the machine. It
    // is a fresh exec of this binary so its argv[0] can start with '@'.
    sys::keep_across_exec(fd).map_err(|e| format!("fcntl: {e}"))?;
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
            return Err("the NBD keeper did not start within 10 s".into());
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
fn spawn_helper(what: &str, argv0: &str, args: &[String]) -> Result<(), String> {
    let mut c = std::process::Command::new("/init");
    c.arg0(argv0).args(args);
    // The kernel log as its stdout (see `helper_say`): opened here, while
    // /dev is still mounted where the helper's root can reach it.
    if let Ok(kmsg) = std::fs::OpenOptions::new().write(true).open(KMSG) {
        c.stdout(kmsg);
    }
    c.spawn().map(drop).map_err(|e| format!("starting the {what}: {e}"))
}

/// The kernel log's device (char 1:11).
const KMSG: &str = "/dev/kmsg";
/// The level of the helpers' lines in the kernel log: notice, below the
/// threshold of a `quiet` console (4), which has them once, from stderr.
const KMSG_LEVEL: u8 = 5;

/// A line from a helper that outlives /init (`@pxeroot-nbd`, `@pxeroot-dhcp`):
/// on the console (stderr) and, when its stdout is /dev/kmsg, in the
/// kernel log too, where it outlasts the console (`dmesg`, `journalctl -k`
/// in a systemd root). One write per line: /dev/kmsg takes each write as
/// one record.
fn helper_say(tag: &str, msg: std::fmt::Arguments) {
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

/// The keeper: `@pxeroot-nbd --keep-nbd-device FD`. Never returns while the
/// device lives.
fn keep_nbd_device(args: &[String]) -> ! {
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
struct NetlinkAttach {
    events: nbdnl::Genl,
    cmd: nbdnl::Genl,
}

impl NetlinkAttach {
    fn open() -> Result<NetlinkAttach, String> {
        let events = nbdnl::Genl::open()?;
        events.join_events()?;
        Ok(NetlinkAttach { events, cmd: nbdnl::Genl::open()? })
    }
}

/// The monitor to start once the device is attached: its arguments name
/// the events socket, which it keeps open.
struct Monitor {
    argv: Vec<String>,
    _events: nbdnl::Genl,
}

/// CONNECT through netlink with a dead-connection timeout; returns the
/// monitor that reconnects when the link dies, to start.
fn attach_netlink(
    s: &Settings,
    export: &str,
    genl: NetlinkAttach,
    sock: std::net::TcpStream,
    info: nbd::Export,
) -> Result<Monitor, String> {
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
    sys::keep_across_exec(events.raw_fd()).map_err(|e| format!("fcntl: {e}"))?;
    let mut argv = vec![MONITOR_FLAG.to_string()];
    argv.extend(args.to_args());
    Ok(Monitor { argv, _events: events })
}

/// The monitor: `@pxeroot-nbd --monitor FD INDEX SERVER EXPORT SIZE FLAGS`.
fn run_monitor(args: &[String]) -> ! {
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
fn disconnect(device: &str, then: Option<sys::Finally>) -> i32 {
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

/// The root filesystem's device: the NBD disk, or one of its partitions.
fn root_device(partition: Option<u32>) -> String {
    match partition {
        Some(n) => format!("/dev/nbd0p{n}"),
        None => "/dev/nbd0".to_string(),
    }
}

/// Without `pxeroot.partition`: the partition (or, `None`, the whole disk)
/// that `root=PARTUUID=`, `root=UUID=` or `root=LABEL=` names; without
/// those, the GPT partition of the Discoverable Partitions root type, else
/// the whole disk.
fn find_root_partition(con: &Console, s: &Settings) -> Result<Option<u32>, String> {
    use std::os::unix::fs::FileExt;
    let disk = std::fs::File::open("/dev/nbd0").map_err(|e| format!("opening /dev/nbd0: {e}"))?;
    let table = gpt::read(|buf, off| disk.read_exact_at(buf, off)).map_err(|e| format!("reading /dev/nbd0's partition table: {e}"))?;
    let parts = table.map_err(|e| format!("/dev/nbd0: {e}"))?.unwrap_or_default();
    let by = |p: &gpt::Partition, why: &dyn Display| {
        con.say(format_args!("root: partition {}, {why}", p.number));
        Ok(Some(p.number))
    };
    match &s.root {
        None => match gpt::pick_root(&parts, None) {
            Some(p) => by(p, &format_args!("the GPT partition of the root type {}", gpt::ROOT_TYPE)),
            None => Ok(None),
        },
        Some(RootRef::PartUuid(id)) => match gpt::pick_root(&parts, Some(id)) {
            Some(p) => by(p, &format_args!("root=PARTUUID={id}")),
            None if parts.is_empty() => {
                Err(format!("root=PARTUUID={id}: /dev/nbd0 has no partition table (drop root= for a disk that is one filesystem)"))
            }
            None => {
                let have: Vec<String> = parts.iter().map(|p| format!("{} {}", p.number, p.partuuid())).collect();
                Err(format!(
                    "root=PARTUUID={id}: no partition of /dev/nbd0 has that PARTUUID; its {} table has {}",
                    parts[0].table(),
                    have.join(", ")
                ))
            }
        },
        Some(wanted) => {
            // The whole disk (one filesystem), then each partition.
            let candidates = std::iter::once((None, 0)).chain(parts.iter().map(|p| (Some(p.number), p.start)));
            let mut found = Vec::new();
            for (number, start) in candidates {
                let mut head = vec![0u8; gpt::fsid::SUPERBLOCK_BYTES];
                // A partition too small for every superblock offset read
                // here holds none of these filesystems.
                if disk.read_exact_at(&mut head, start).is_err() {
                    continue;
                }
                let Some(fs) = gpt::fsid::identify(&head) else { continue };
                let place = number.map_or("the whole disk".to_string(), |n| format!("partition {n}"));
                let hit = match wanted {
                    RootRef::Uuid(u) => fs.uuid == *u,
                    RootRef::Label(l) => fs.label == *l,
                    RootRef::PartUuid(_) => false,
                };
                if hit {
                    con.say(format_args!("root: {place}, {wanted} ({})", fs.kind));
                    return Ok(number);
                }
                found.push(format!("{place}: {} UUID={} LABEL={:?}", fs.kind, fs.uuid, fs.label));
            }
            let found = if found.is_empty() { "no ext2/3/4, XFS or btrfs filesystem".to_string() } else { found.join("; ") };
            Err(format!("{wanted}: no filesystem on /dev/nbd0 has it; found {found}"))
        }
    }
}

/// The partitions the kernel found on /dev/nbd0, by number.
fn partitions() -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir("/sys/block/nbd0")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("nbd0p")?.parse().ok()).collect())
        .unwrap_or_default();
    found.sort_unstable();
    found
}

fn list(numbers: &[u32]) -> String {
    numbers.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Have the kernel read /dev/nbd0's partition table, then wait for
/// partition `n`'s device node.
fn wait_for_partition(n: u32) -> Result<(), String> {
    let disk = std::fs::File::open("/dev/nbd0").map_err(|e| format!("opening /dev/nbd0: {e}"))?;
    sys::ioctl_arg(disk.as_raw_fd(), sys::BLKRRPART, 0).map_err(|e| format!("reading /dev/nbd0's partition table: {e}"))?;
    let node = PathBuf::from(format!("/dev/nbd0p{n}"));
    let deadline = Instant::now() + PARTITION_WAIT;
    while !node.exists() {
        if Instant::now() > deadline {
            let found = partitions();
            return Err(if found.is_empty() {
                "/dev/nbd0 has no partition table the kernel reads: for an image that is one filesystem, leave the image's `partition` (pxeroot.partition) unset".to_string()
            } else {
                format!("/dev/nbd0 has no partition {n}; it has {}: set the image's `partition` to the root's", list(&found))
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The root's filesystem type when `rootfstype=` names none and its
/// superblock does not either.
const DEFAULT_FSTYPE: &str = "ext4";
/// Bytes read first when probing the root's superblock: ext2/3/4's (at
/// 1 KiB) and XFS's (at 0) are in them, and the mount reads the same page.
const FIRST_PROBE: usize = 4096;

/// The filesystem type `device`'s superblock names (ext2/3/4 as "ext4",
/// "xfs", "btrfs"), as the kernel would find by trying each: the first
/// page, then, for btrfs, up to its superblock at 64 KiB.
fn root_fstype(device: &str) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let dev = std::fs::File::open(device).ok()?;
    let mut head = vec![0u8; gpt::fsid::SUPERBLOCK_BYTES];
    dev.read_exact_at(&mut head[..FIRST_PROBE], 0).ok()?;
    let found = gpt::fsid::identify(&head[..FIRST_PROBE]).or_else(|| {
        dev.read_exact_at(&mut head[FIRST_PROBE..], FIRST_PROBE as u64).ok()?;
        gpt::fsid::identify(&head)
    });
    found.map(|fs| fs.kind.to_string())
}

fn mount_root(s: &Settings, fstype: &str, partition: Option<u32>, device: &str) -> Result<(), String> {
    std::fs::create_dir_all(NEWROOT).map_err(|e| format!("mkdir {NEWROOT}: {e}"))?;
    let flags = if s.read_only { sys::MS_RDONLY } else { 0 };
    sys::mount(device, NEWROOT, fstype, flags, &s.rootflags).map_err(|e| {
        // Opening the disk for the mount had the kernel read its partition
        // table: a disk image with partitions needs one named.
        let found = if partition.is_none() { partitions() } else { Vec::new() };
        if found.is_empty() {
            format!(
                "{e} (the kernel's message above, if any, says why; is the {fstype} module in the initramfs \
                 (pxeroot initramfs --modules), and the image a {fstype} filesystem?)"
            )
        } else {
            format!(
                "{e}: /dev/nbd0 holds a partition table (partitions {}), so the root is on one of them: \
                 set the image's `partition` in pxeroot's config (pxeroot.partition=N on the kernel command line), \
                 or root=PARTUUID=|UUID=|LABEL=, or give the root partition the GPT root type {}",
                list(&found),
                gpt::ROOT_TYPE
            )
        }
    })
}

/// Leave the root's udev, systemd-networkd and ifupdown units the files
/// that keep the boot interface as it is (handoff.rs), in a `/run` mounted as systemd mounts
/// it: never on the root filesystem. Only for a root with systemd and a
/// `/run` to mount on; a failure is said and the boot goes on.
fn hand_off_network(con: &Console, nic: &handoff::BootNic) {
    let run = format!("{NEWROOT}/run");
    if !Path::new(&run).is_dir() || !handoff::SYSTEMD_DIRS.iter().any(|d| Path::new(NEWROOT).join(d).is_dir()) {
        return;
    }
    let what =
        format!("hand {} to the root's udev, networkd, ifupdown and NetworkManager (/run/{}/{}.*)", nic.name, handoff::DIR, handoff::STEM);
    let done = con.step(&what, || -> Result<(), String> {
        sys::mount("tmpfs", &run, "tmpfs", sys::MS_NOSUID | sys::MS_NODEV | sys::MS_STRICTATIME, handoff::RUN_OPTIONS)
            .map_err(|e| format!("mounting a tmpfs on {run}: {e}"))?;
        for (file, text) in nic.files() {
            let path = Path::new(&run).join(file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
            }
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    });
    if let Err(e) = done {
        con.say(format_args!(
            "{e}: the root's own network configuration applies to {}, and must keep its address (KeepConfiguration=yes)",
            nic.name
        ));
    }
}

/// Delete the initramfs's files (they would pin memory forever), staying on
/// its own filesystem.
fn free_initramfs(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if !sys::same_device(&p, dev) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => {
                free_initramfs(&p, dev);
                let _ = std::fs::remove_dir(&p);
            }
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

fn switch_root(s: &Settings) -> String {
    use std::os::unix::fs::MetadataExt;
    for dir in ["/proc", "/sys", "/dev"] {
        let target = format!("{NEWROOT}{dir}");
        if let Err(e) = sys::mount(dir, &target, "", sys::MS_MOVE, "") {
            return format!("moving {dir} into the new root: {e} (does the root image have {dir}?)");
        }
    }
    let dev = match std::fs::metadata("/") {
        Ok(m) => m.dev(),
        Err(e) => return format!("stat /: {e}"),
    };
    free_initramfs(Path::new("/"), dev);
    if let Err(e) = std::env::set_current_dir(NEWROOT) {
        return format!("chdir {NEWROOT}: {e}");
    }
    if let Err(e) = sys::mount(".", "/", "", sys::MS_MOVE, "") {
        return format!("moving the new root onto /: {e}");
    }
    if let Err(e) = std::os::unix::fs::chroot(".") {
        return format!("chroot: {e}");
    }
    if let Err(e) = std::env::set_current_dir("/") {
        return format!("chdir /: {e}");
    }
    sys::sync();
    let err = std::process::Command::new(&s.init).exec();
    format!("exec {}: {err} (does the root image have it?)", s.init)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// An ACK for `xid`: a DISCOVER turned into a reply.
    fn ack(xid: u32) -> Vec<u8> {
        let mut m = dhcp::discover(xid, MAC);
        m[0] = 2; // BOOTREPLY
        m[242] = dhcp::ACK; // option 53's value
        m
    }

    /// The deadline is kept, past it only what has arrived is read, and a
    /// call after one that ended past its deadline waits again (the lease
    /// keeper sends up to three times on one socket).
    #[test]
    fn await_reply_waits_until_its_deadline_and_no_longer() {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = client.local_addr().unwrap();
        // Past the deadline: a queued reply is still read, then nothing.
        server.send_to(&ack(7), to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(await_reply(&client, 7, MAC, dhcp::ACK, past).map(|l| l.message_type), Some(dhcp::ACK));
        let t = Instant::now();
        assert!(await_reply(&client, 7, MAC, dhcp::ACK, past).is_none());
        assert!(t.elapsed() < Duration::from_millis(100), "waited past its deadline");
        // Another exchange's reply is skipped; the deadline ends the wait.
        server.send_to(&ack(8), to).unwrap();
        let t = Instant::now();
        assert!(await_reply(&client, 7, MAC, dhcp::ACK, t + Duration::from_millis(150)).is_none());
        assert!((Duration::from_millis(140)..Duration::from_secs(2)).contains(&t.elapsed()), "{:?}", t.elapsed());
        // After a call that ended past its deadline, a reply that comes
        // 100 ms later within the next deadline is read.
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            server.send_to(&ack(9), to).unwrap();
        });
        assert_eq!(
            await_reply(&client, 9, MAC, dhcp::ACK, Instant::now() + Duration::from_secs(2)).map(|l| l.message_type),
            Some(dhcp::ACK)
        );
        late.join().unwrap();
    }

    /// An INFORM's ACK gives its NTP servers; a NAK and silence give
    /// nothing, each said as what it is.
    #[test]
    fn informed_tells_a_nak_from_silence() {
        let server = std::net::Ipv4Addr::new(10, 99, 0, 1);
        let mut ack = dhcp::Lease::bare(dhcp::ACK, std::net::Ipv4Addr::UNSPECIFIED);
        ack.ntp = vec![std::net::Ipv4Addr::new(192, 0, 2, 123)];
        assert_eq!(informed(Some(ack), server).unwrap().ntp, vec![std::net::Ipv4Addr::new(192, 0, 2, 123)]);
        let nak = informed(Some(dhcp::Lease::bare(dhcp::NAK, std::net::Ipv4Addr::UNSPECIFIED)), server).unwrap_err();
        assert_eq!(nak, "10.99.0.1 answered the DHCPINFORM with a NAK");
        let silence = informed(None, server).unwrap_err();
        assert_eq!(silence, "no answer to DHCPINFORM from 10.99.0.1 within 250ms");
    }
}
