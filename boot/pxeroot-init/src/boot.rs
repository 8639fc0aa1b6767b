//! /init's sequence: mounts, modules beside the network, the attach, the
//! root, the switch. Each stage lives in its own module; this one orders
//! them and runs the network and the root's modules side by side.

use crate::attach::{attach_ioctl, attach_netlink, connect_with_retry, spawn_helper, Connected, NetlinkAttach, KEEPER_ARGV0};
use crate::cmdline::{self, Attach, NetConfig};
use crate::console::Console;
use crate::dhcpio::{ifindex, Inform};
use crate::error::{Context, InitError};
use crate::keeper::{LEASE_ARGV0, LEASE_FLAG};
use crate::modules::Modules;
use crate::nic::{configure_net, find_interface, say_services, Nic};
use crate::root::{
    find_root_partition, hand_off_network, mount_root, root_device, root_fstype, switch_root, wait_for_partition, DEFAULT_FSTYPE,
};
use crate::{dhcp, handoff, lease, sys};
use pxeroot_init::mac_text;

/// What the network thread brings back: the NBD connection, the lease to
/// keep, the services for the root, the DHCPINFORM whose answer is read
/// after the attach.
struct Network {
    connected: Connected,
    keeper: Option<lease::KeeperArgs>,
    services: handoff::NetServices,
    inform: Option<Inform>,
}

/// What the modules and the network side by side give the attach.
struct Started {
    export: String,
    /// The network thread's end (its own result, or its panic).
    net: std::thread::Result<Result<Network, InitError>>,
    /// The netlink sockets (netlink attach), opened once nbd loaded.
    genl: Option<Result<NetlinkAttach, InitError>>,
    nic: Nic,
}

/// Mount point of the new root inside the initramfs.
pub(crate) const NEWROOT: &str = "/newroot";

pub(crate) fn boot(con: &Console) -> Result<(), InitError> {
    con.step("mount /proc, /sys, /dev", mount_early)?;
    let text = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    let settings = cmdline::parse(&text).context("the kernel command line")?;
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
    let Started { export, net, genl, nic } = std::thread::scope(|scope| -> Result<_, InitError> {
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
        let nic = con.step("find the boot interface", || find_interface(con, &settings))?;
        con.say(format_args!("boot interface {} ({})", nic.name, mac_text(&nic.mac)));
        let export = settings.export.clone().unwrap_or_else(|| mac_text(&nic.mac));
        // The network comes up and the NBD handshake runs while the root's
        // modules load: under TCG that overlaps 0.3 s of module loading
        // with the carrier wait and the server's round trips.
        let (settings, name, Nic { name: iface, mac }) = (&settings, export.clone(), nic.clone());
        let net = scope.spawn(move || -> Result<_, InitError> {
            let up = con.step(&format!("configure {iface}"), || configure_net(con, settings, &iface, mac))?;
            let keeper = match up.held {
                Some(held) => Some(lease::KeeperArgs { ifindex: ifindex(&iface)?, mac, held, debug: settings.debug }),
                None => None,
            };
            let connected = connect_with_retry(con, settings, &name, up.link_up);
            Ok(Network { connected, keeper, services: up.services, inform: up.inform })
        });
        let genl = match early {
            Some(h) => h.join().map_err(|_| InitError::new("the module thread panicked"))?,
            None => load_rest(1),
        };
        Ok(Started { export, net: net.join(), genl, nic })
    })?;
    con.say(format_args!("{} modules loaded", modules.loaded()));
    let Network { connected: Connected { sock, info }, keeper, services, inform } =
        net.map_err(|_| InitError::new("the network thread panicked"))??;
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
    let mut nic = handoff::BootNic { name: nic.name, mac: nic.mac, leased, services };
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
    let answered = after_attach.join().map_err(|_| InitError::new("the thread after the attach panicked"))??;
    if let Some(more) = answered {
        nic.services = nic.services.or(more);
    }
    say_services(con, &nic.name, &nic.services);
    if settings.handoff {
        hand_off_network(con, &nic);
    }
    con.say(format_args!("switching root, exec {}", settings.init));
    let err = switch_root(&settings);
    Err(InitError::new(format!("switch_root failed: {err}")))
}

pub(crate) fn mount_early() -> std::io::Result<()> {
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
