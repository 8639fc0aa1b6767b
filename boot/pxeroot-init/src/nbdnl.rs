//! Attaching /dev/nbd0 through the kernel's NBD generic netlink family, and
//! the monitor that reconnects a dead link.
//!
//! With a dead-connection timeout set, the kernel keeps the device's
//! requests waiting when the TCP connection dies and announces LINK_DEAD on
//! the `nbd_mc_group` multicast group. The monitor (a small hardened process
//! started before switch_root) then reconnects to the same export, checks
//! that size and flags did not change, and hands the kernel the new socket
//! with RECONFIGURE. A pxeroot restart thus costs the client a pause, not
//! its root.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::error::{Context, InitError};
use crate::netlink::{self, Attr, Message};
use crate::{nbd, sys};

/// Receive buffer for netlink replies and events.
const RECV_BUF: usize = 16 * 1024;
/// Backoff between reconnect attempts: doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Genl {
    fd: OwnedFd,
    family: u16,
    group: u32,
    seq: u32,
}

impl Genl {
    /// Open a socket and look up the "nbd" family and its multicast group.
    pub fn open() -> Result<Genl, InitError> {
        let fd = sys::netlink_socket().context("netlink socket")?;
        let mut g = Genl { fd, family: netlink::GENL_ID_CTRL, group: 0, seq: 0 };
        let reply = g
            .call(netlink::CTRL_CMD_GETFAMILY, 1, &[Attr::Str(netlink::CTRL_ATTR_FAMILY_NAME, netlink::NBD_FAMILY)])
            .context("looking up the nbd netlink family (is nbd.ko loaded?)")?;
        let (id, group) = netlink::family_reply(&reply, netlink::NBD_MCAST_GROUP);
        g.family = id.ok_or_else(|| InitError::new("the nbd netlink family has no id"))?;
        g.group = group.ok_or_else(|| InitError::new("the nbd netlink family has no multicast group"))?;
        Ok(g)
    }

    /// Send a request and read until its ACK; returns the attributes of the
    /// reply message, if the kernel sent one.
    fn call(&mut self, cmd: u8, version: u8, attrs: &[Attr]) -> Result<Vec<u8>, InitError> {
        self.seq += 1;
        let seq = self.seq;
        sys::netlink_send(self.fd.as_raw_fd(), &netlink::request(self.family, cmd, version, seq, attrs))?;
        let mut reply = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = sys::netlink_recv(self.fd.as_raw_fd(), &mut buf)?;
            for m in netlink::messages(&buf[..n]) {
                match m {
                    Message::Genl { seq: s, attrs, .. } if s == seq => reply = attrs.to_vec(),
                    // Every request's ACK is consumed, or later replies are misread.
                    Message::Ack { seq: s, errno } if s == seq => {
                        return if errno == 0 { Ok(reply) } else { Err(std::io::Error::from_raw_os_error(-errno).into()) };
                    }
                    _ => {}
                }
            }
        }
    }

    /// Subscribe this socket to LINK_DEAD events.
    pub fn join_events(&self) -> Result<(), InitError> {
        sys::netlink_join(self.fd.as_raw_fd(), self.group).context("joining nbd_mc_group")
    }

    fn sockets(fd: i32) -> Attr<'static> {
        Attr::Nested(
            netlink::NBD_ATTR_SOCKETS,
            vec![Attr::Nested(netlink::NBD_SOCK_ITEM, vec![Attr::U32(netlink::NBD_SOCK_FD, fd as u32)])],
        )
    }

    /// CONNECT device `index` to `sock`.
    pub fn connect(
        &mut self,
        index: u32,
        sock: &std::net::TcpStream,
        export: nbd::Export,
        timeout: u64,
        dead_timeout: u64,
    ) -> Result<(), InitError> {
        self.call(
            netlink::NBD_CMD_CONNECT,
            netlink::NBD_GENL_VERSION,
            &[
                Attr::U32(netlink::NBD_ATTR_INDEX, index),
                Attr::U64(netlink::NBD_ATTR_SIZE_BYTES, export.size),
                Attr::U64(netlink::NBD_ATTR_BLOCK_SIZE_BYTES, nbd::BLOCK_SIZE),
                Attr::U64(netlink::NBD_ATTR_TIMEOUT, timeout),
                Attr::U64(netlink::NBD_ATTR_DEAD_CONN_TIMEOUT, dead_timeout),
                Attr::U64(netlink::NBD_ATTR_SERVER_FLAGS, export.flags as u64),
                Self::sockets(sock.as_raw_fd()),
            ],
        )
        .map(|_| ())
        .context("NBD_CMD_CONNECT")
    }

    /// RECONFIGURE device `index` with a new socket for its dead one.
    pub fn reconfigure(&mut self, index: u32, sock: &std::net::TcpStream) -> Result<(), InitError> {
        self.call(
            netlink::NBD_CMD_RECONFIGURE,
            netlink::NBD_GENL_VERSION,
            &[Attr::U32(netlink::NBD_ATTR_INDEX, index), Self::sockets(sock.as_raw_fd())],
        )
        .map(|_| ())
        .context("NBD_CMD_RECONFIGURE")
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Wait for the next LINK_DEAD event for device `index`.
    pub fn wait_link_dead(fd: i32, index: u32) -> Result<(), InitError> {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let n = sys::netlink_recv(fd, &mut buf)?;
            for m in netlink::messages(&buf[..n]) {
                if let Message::Genl { cmd: netlink::NBD_CMD_LINK_DEAD, attrs, .. } = m {
                    if netlink::attr_u32(attrs, netlink::NBD_ATTR_INDEX).unwrap_or(index) == index {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// What the monitor needs to reconnect, passed on its command line.
pub struct MonitorArgs {
    pub events_fd: i32,
    pub index: u32,
    pub server: std::net::SocketAddrV4,
    pub export: String,
    pub size: u64,
    pub flags: u16,
}

impl MonitorArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            self.events_fd.to_string(),
            self.index.to_string(),
            self.server.to_string(),
            self.export.clone(),
            self.size.to_string(),
            self.flags.to_string(),
        ]
    }

    pub fn parse(a: &[String]) -> Option<MonitorArgs> {
        Some(MonitorArgs {
            events_fd: a.first()?.parse().ok()?,
            index: a.get(1)?.parse().ok()?,
            server: a.get(2)?.parse().ok()?,
            export: a.get(3)?.clone(),
            size: a.get(4)?.parse().ok()?,
            flags: a.get(5)?.parse().ok()?,
        })
    }
}

/// The monitor's loop: forever, wait for the link to die, then reconnect.
pub fn monitor(m: &MonitorArgs, say: impl Fn(String)) -> ! {
    loop {
        if let Err(e) = Genl::wait_link_dead(m.events_fd, m.index) {
            say(format!("reading NBD events failed: {e}; retrying"));
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        say(format!("nbd{}: connection to {} lost, reconnecting", m.index, m.server));
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            let result = nbd::connect(m.server, &m.export).context("connecting").and_then(|(sock, export)| {
                if export.size != m.size || export.flags != m.flags {
                    return Err(InitError::new(format!(
                        "the export changed (size {} -> {}, flags 0x{:x} -> 0x{:x}); refusing to reattach it",
                        m.size, export.size, m.flags, export.flags
                    )));
                }
                Genl::open()?.reconfigure(m.index, &sock)
            });
            match result {
                Ok(()) => {
                    say(format!("nbd{}: reconnected to {} after {attempt} attempt(s)", m.index, m.server));
                    break;
                }
                Err(e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        say(format!("nbd{}: reconnect attempt {attempt} failed: {e}", m.index));
                    }
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}
