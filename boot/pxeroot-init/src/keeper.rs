//! `@pxeroot-dhcp`: the process that keeps the boot address's DHCP lease
//! after the switch root (its schedule is `lease`'s, pure).

use std::time::{Duration, Instant};

use crate::console::helper_say;
use crate::dhcpio::{await_reply, dhcp_socket, new_xid, Via, DHCP_REPLY_WAIT};
use crate::{dhcp, lease, sys};
use pxeroot_init::mac_text;

/// argv[0] of the process that keeps the DHCP lease (spared at shutdown
/// too: the address must last until the root is disconnected).
pub(crate) const LEASE_ARGV0: &str = "@pxeroot-dhcp";

pub(crate) const LEASE_FLAG: &str = "--keep-lease";

/// REQUESTs sent per attempt at extending the lease, each followed by a
/// wait of DHCP_REPLY_WAIT for the reply.
pub(crate) const RENEW_SENDS: u32 = 3;

/// The lease keeper checks the boot clock at least this often (seconds)
/// while it waits, so a suspend does not make it late.
pub(crate) const LEASE_CLOCK_STEP: u64 = 60;

/// The lease keeper: `@pxeroot-dhcp --keep-lease ARGS` (lease::KeeperArgs).
/// Renews at T1, rebinds at T2, and goes on asking past the lease's end:
/// the root stays on the address whatever the server says, so every
/// failure is said on the console with what it risks. Quiet while all is
/// well (each renewal is said with `pxeroot.debug`, or after a failure).
pub(crate) fn keep_lease(args: &[String]) -> ! {
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
pub(crate) fn renew_once(
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
