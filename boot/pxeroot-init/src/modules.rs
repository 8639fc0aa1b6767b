//! Kernel modules from the initramfs's list (`/etc/pxeroot/modules`): NIC
//! drivers for the devices that are there first, the root's groups (nbd,
//! the filesystem) beside them, each module loaded once whichever thread
//! asks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use modlist::PATH as MODULE_LIST;

use crate::console::Console;
use crate::error::{Context, InitError};
use crate::nic::interfaces;
use crate::sys;

/// How far one module file got, shared by the threads that load modules.
pub(crate) enum Load {
    Loading,
    Done,
    Failed(String),
}

/// What `load_drivers` did.
pub(crate) struct Drivers {
    /// Modules it loaded.
    pub(crate) loaded: usize,
    /// Driver groups left unloaded: no device matched.
    pub(crate) skipped: usize,
    /// Driver groups loaded although no device matched, because none of
    /// the matching ones gave a network interface.
    pub(crate) fallback: usize,
}

/// The module list's groups and how far each module got. Drivers first
/// (`load_drivers`), so the network can come up while the rest
/// (`load_rest`: nbd, the filesystem) loads; with several CPUs the rest
/// loads beside the drivers too.
pub(crate) struct Modules {
    groups: Vec<modlist::Group>,
    state: std::sync::Mutex<std::collections::HashMap<String, Load>>,
    changed: std::sync::Condvar,
    cmdline: String,
    /// `pxeroot.debug`: print each module's load time.
    debug: bool,
}

impl Modules {
    pub(crate) fn open(cmdline: &str, debug: bool) -> Result<Modules, InitError> {
        let groups = match std::fs::read_to_string(MODULE_LIST) {
            Ok(text) => modlist::parse(&text).context(MODULE_LIST)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(InitError::new(format!("reading {MODULE_LIST}: {e}"))),
        };
        Ok(Modules { groups, state: Default::default(), changed: Default::default(), cmdline: cmdline.to_string(), debug })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Load>> {
        // A poisoned lock only means another loading thread panicked: the
        // map itself is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Load one module unless it is loaded; if another thread is loading
    /// it, wait for that. True when this call loaded it. An optional
    /// module's failure is said and taken as not loaded.
    pub(crate) fn load(&self, con: &Console, m: &modlist::Module) -> Result<bool, InitError> {
        let mut state = self.lock();
        loop {
            match state.get(&m.path) {
                None => break,
                Some(Load::Done) => return Ok(false),
                // Reported by the thread that tried it.
                Some(Load::Failed(_)) if m.optional => return Ok(false),
                Some(Load::Failed(e)) => return Err(InitError::new(e.clone())),
                Some(Load::Loading) => state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            }
        }
        state.insert(m.path.clone(), Load::Loading);
        drop(state);
        let params = modlist::params_for(m, &self.cmdline);
        let started = Instant::now();
        let result = std::fs::File::open(&m.path).with_context(|| format!("opening module {}", m.path)).and_then(|f| {
            sys::finit_module(&f, &params).map_err(|e| {
                let with = if params.is_empty() { String::new() } else { format!(" with {params}") };
                InitError::new(format!("loading module {}{with}: {e} (is it built for this kernel?)", m.path))
            })
        });
        if self.debug {
            con.say(format_args!("finit_module {}: {:.3} s", m.path, started.elapsed().as_secs_f64()));
        }
        let done = match &result {
            Ok(()) => Load::Done,
            Err(e) => Load::Failed(e.to_string()),
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
    pub(crate) fn load_group(&self, con: &Console, i: usize) -> Result<usize, InitError> {
        let mut n = 0;
        for m in &self.groups[i].modules {
            n += usize::from(self.load(con, m)?);
        }
        Ok(n)
    }

    /// Modules loaded so far, by any thread.
    pub(crate) fn loaded(&self) -> usize {
        self.lock().values().filter(|l| matches!(l, Load::Done)).count()
    }

    /// Each driver group whose device is there, checked when the group's
    /// turn comes (so a bus driver loaded earlier, virtio_pci, has
    /// registered its devices). If that leaves the machine without a
    /// network interface, load the skipped groups too: an alias this code
    /// misreads must cost time, not the boot.
    pub(crate) fn load_drivers(&self, con: &Console) -> Result<Drivers, InitError> {
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
    pub(crate) fn load_rest(&self, con: &Console, threads: usize) -> Result<usize, InitError> {
        let always: Vec<usize> = (0..self.groups.len()).filter(|&i| self.groups[i].when.is_empty()).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let worker = || -> Result<usize, InitError> {
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
            workers.into_iter().map(|t| t.join().map_err(|_| InitError::new("a module thread panicked"))?).sum()
        })
    }

    /// Every module file the list names, loaded or not.
    pub(crate) fn files(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().flat_map(|g| &g.modules).map(|m| m.path.as_str())
    }
}

/// The modaliases of the devices on `buses` (`/sys/bus/BUS/devices/*/modalias`),
/// or on every bus when `None`. A bus not registered yet has no devices.
pub(crate) fn device_modaliases(buses: Option<&[String]>) -> Vec<String> {
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
