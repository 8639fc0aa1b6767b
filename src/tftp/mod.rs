//! TFTP: the boot directory and the per-client scripts, read-only, with
//! blksize, tsize, timeout and windowsize. The packets and the option
//! decision are pure (`packet.rs`); this shell owns the sockets: one on the
//! listen address, and one per transfer on an ephemeral port (the
//! transfer's TID, RFC 1350).
//!
//! Our own sender, not async-tftp (the design card's choice): async-tftp
//! has one global block size limit, but some UEFI TFTP clients need a lower
//! one than the rest (a per-client cap), and its lock-step transfers ran at
//! 0.78-0.86x dnsmasq's (BENCHMARKS.md, ARCHITECTURE.md).

pub mod packet;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bootfiles::{BootFile, ResolveError, Resolver};
use crate::listen::Admission;
use packet::Packet;

/// Largest block size we agree to unless a client's cap says less: the
/// largest that fits an unfragmented 1500-byte Ethernet frame.
pub const MAX_BLOCK_SIZE: u16 = 1468;
/// Largest window (RFC 7440) we agree to.
pub const MAX_WINDOW_SIZE: u16 = 64;
/// Retransmissions of one window before a transfer is abandoned.
pub const MAX_RETRIES: u32 = 5;
/// Largest request we read (RRQs are a file name and a few options).
const MAX_REQUEST: usize = 2048;
/// Transfers under way at once (each holds a socket, a buffer and an open
/// file); a read request beyond it gets an error packet that says the
/// server is busy, and the firmware or iPXE asks again.
pub const MAX_TRANSFERS: usize = 256;
/// The error text a client over [`MAX_TRANSFERS`] gets.
pub const BUSY_MESSAGE: &str = "server busy, try again";

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
}

/// A block size cap for clients in an IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlksizeCap {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub blksize: u16,
}

/// The cap for `client`: the longest matching prefix, else [`MAX_BLOCK_SIZE`].
pub fn blksize_for(caps: &[BlksizeCap], client: IpAddr) -> u16 {
    let IpAddr::V4(ip) = client else { return MAX_BLOCK_SIZE };
    caps.iter()
        .filter(|c| {
            let mask = if c.prefix == 0 { 0 } else { u32::MAX << (32 - c.prefix as u32) };
            u32::from(ip) & mask == u32::from(c.network) & mask
        })
        .max_by_key(|c| c.prefix)
        .map_or(MAX_BLOCK_SIZE, |c| c.blksize.min(MAX_BLOCK_SIZE))
}

enum Source {
    File(std::fs::File),
    Bytes(Vec<u8>),
}

impl Source {
    fn read_block(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        match self {
            Source::File(f) => f.read_exact_at(buf, off),
            Source::Bytes(b) => {
                buf.copy_from_slice(&b[off as usize..off as usize + buf.len()]);
                Ok(())
            }
        }
    }
}

/// Serve TFTP on `addr` until `shutdown`, then let the transfers under way
/// finish, bounded by [`crate::listen::DRAIN_TIMEOUT`].
pub async fn serve(
    addr: SocketAddr,
    resolver: Arc<Resolver>,
    caps: Arc<Vec<BlksizeCap>>,
    shutdown: CancellationToken,
) -> Result<(), TftpError> {
    let sock = Arc::new(UdpSocket::bind(addr).await.map_err(|error| {
        crate::listen::BindError::new("TFTP", addr, addr.port(), error, "set tftp.listen to another address, or tftp.enabled = false")
    })?);
    info!(%addr, "TFTP listening");
    let admission = Admission::new("TFTP", "transfers", MAX_TRANSFERS);
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (n, client) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "TFTP receive failed");
                    continue;
                }
            },
        };
        match packet::parse(&buf[..n]) {
            Ok(Packet::Read { file, options }) => {
                let Some(permit) = admission.try_admit(&client) else {
                    let _ = sock.send_to(&packet::error(packet::ERR_NOT_DEFINED, BUSY_MESSAGE), client).await;
                    continue;
                };
                // Opening may start a new boot (a synced record, perhaps a
                // wait for the client's old overlay to close): off the
                // runtime, and off this loop, so no request waits for another.
                let (resolver, caps, sock) = (resolver.clone(), caps.clone(), sock.clone());
                admission.spawn(permit, tracing::debug_span!("tftp", %client), async move {
                    let opened = {
                        let file = file.clone();
                        tokio::task::spawn_blocking(move || open(&resolver, &file, client)).await
                    };
                    let (source, size) = match opened {
                        Ok(Ok(x)) => x,
                        Ok(Err((code, msg))) => {
                            let _ = sock.send_to(&packet::error(code, &msg), client).await;
                            return;
                        }
                        Err(e) => {
                            warn!(%client, %file, error = %e, "opening a TFTP file failed");
                            let _ = sock.send_to(&packet::error(packet::ERR_NOT_DEFINED, "server error"), client).await;
                            return;
                        }
                    };
                    let cap = blksize_for(&caps, client.ip());
                    let (t, oack) = packet::negotiate(&options, size, cap, MAX_WINDOW_SIZE);
                    debug!(%client, %file, size, ?t, "TFTP read request");
                    let local = if addr.ip().is_unspecified() { None } else { Some(addr.ip()) };
                    let started = Instant::now();
                    match send(client, local, &source, size, t, &oack).await {
                        Ok(Sent::Whole) => {
                            info!(%client, file = %file, bytes = size, secs = started.elapsed().as_secs_f64(), blksize = t.blksize, windowsize = t.windowsize, "TFTP transfer finished")
                        }
                        // Not a failure: EDK2's PXE (OVMF, AAVMF) asks for
                        // the size this way before every real transfer.
                        Ok(Sent::Declined { code, message }) => {
                            info!(%client, file = %file, bytes = size, code, %message, "TFTP client ended the transfer at our option acknowledgement, before any data (a size probe, as UEFI PXE firmware sends first)")
                        }
                        Err(e) => warn!(%client, file = %file, error = %e, "TFTP transfer abandoned"),
                    }
                });
            }
            Ok(Packet::Write { file }) => {
                warn!(%client, %file, "TFTP write request refused (read-only server)");
                let _ = sock.send_to(&packet::error(packet::ERR_ACCESS, "read-only server"), client).await;
            }
            Ok(other) => debug!(%client, ?other, "TFTP packet for no transfer ignored"),
            Err(e) => debug!(%client, error = %e, "malformed TFTP packet dropped"),
        }
    }
    admission.drain().await;
    Ok(())
}

/// Resolve and open a requested file; a script fetch starts a new boot.
fn open(resolver: &Resolver, name: &str, client: SocketAddr) -> Result<(Source, u64), (u16, String)> {
    match resolver.resolve(name) {
        Ok(BootFile::File(p)) => {
            let f = std::fs::File::open(&p).map_err(|_| (packet::ERR_NOT_FOUND, "not found".to_string()))?;
            let size = f.metadata().map(|m| m.len()).map_err(|_| (packet::ERR_NOT_FOUND, "not found".to_string()))?;
            Ok((Source::File(f), size))
        }
        Ok(BootFile::Script { mac, text }) => {
            resolver.start_boot(mac, client, "TFTP");
            let size = text.len() as u64;
            Ok((Source::Bytes(text.into_bytes()), size))
        }
        Err(e @ ResolveError::Refused { .. }) => {
            warn!(%client, error = %e, "TFTP request refused");
            Err((packet::ERR_ACCESS, "access violation".into()))
        }
        Err(e @ ResolveError::NotFound { .. }) => {
            debug!(%client, error = %e, "TFTP file not found");
            Err((packet::ERR_NOT_FOUND, "file not found".into()))
        }
    }
}

/// What the client answered a transfer's packet with.
enum Answer {
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// Nothing before the timeout.
    Nothing,
}

/// How a transfer that did not fail ended.
enum Sent {
    Whole,
    /// The client answered the OACK with ERROR: it wanted the options'
    /// answer (the size), not the file.
    Declined {
        code: u16,
        message: String,
    },
}

/// Wait for the client's ACK or ERROR; `Err` when the client is gone.
async fn answer(sock: &UdpSocket, timeout: std::time::Duration) -> Result<Answer, String> {
    let mut buf = [0u8; 516];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let r = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await;
        let n = match r {
            Err(_) => return Ok(Answer::Nothing),
            Ok(Ok(n)) => n,
            // ICMP port unreachable from an earlier packet: the client left.
            Ok(Err(e)) => return Err(format!("client gone: {e}")),
        };
        match packet::parse(&buf[..n]) {
            Ok(Packet::Ack(b)) => return Ok(Answer::Ack(b)),
            Ok(Packet::Error { code, message }) => return Ok(Answer::Error { code, message }),
            _ => continue,
        }
    }
}

/// Send `size` bytes of `source` to `client` from a new port, windowed.
async fn send(
    client: SocketAddr,
    local: Option<IpAddr>,
    source: &Source,
    size: u64,
    t: packet::Transfer,
    oack: &[(String, String)],
) -> Result<Sent, String> {
    let bind_ip =
        local.unwrap_or(if client.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) });
    let sock = UdpSocket::bind((bind_ip, 0)).await.map_err(|e| e.to_string())?;
    sock.connect(client).await.map_err(|e| e.to_string())?;
    let mut retries = 0;
    if !oack.is_empty() {
        let p = packet::oack(oack);
        loop {
            sock.send(&p).await.map_err(|e| e.to_string())?;
            match answer(&sock, t.timeout).await? {
                Answer::Ack(0) => break,
                Answer::Error { code, message } => return Ok(Sent::Declined { code, message }),
                _ => {
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err("no ACK for the OACK".into());
                    }
                }
            }
        }
    }
    let blk = t.blksize as u64;
    // A file whose size is a multiple of the block size ends with an empty block.
    let last = size / blk + 1;
    let mut base = 1u64;
    let mut buf = vec![0u8; blk as usize];
    retries = 0;
    while base <= last {
        let end = (base + t.windowsize as u64 - 1).min(last);
        for b in base..=end {
            let off = (b - 1) * blk;
            let len = blk.min(size - off) as usize;
            source.read_block(&mut buf[..len], off).map_err(|e| format!("reading at {off}: {e}"))?;
            sock.send(&packet::data(b as u16, &buf[..len])).await.map_err(|e| e.to_string())?;
        }
        // Wait for an ACK that moves us on; stale duplicates do not trigger
        // a resend (no Sorcerer's Apprentice), only the timeout does.
        loop {
            match answer(&sock, t.timeout).await? {
                Answer::Error { code, message } => return Err(format!("client sent error {code}: {message}")),
                Answer::Ack(a) => {
                    // The 16-bit block number names the one in [base-1, end].
                    if let Some(k) = (base - 1..=end).rev().find(|k| *k as u16 == a) {
                        if k >= base {
                            base = k + 1;
                            retries = 0;
                            break;
                        }
                    }
                }
                Answer::Nothing => {
                    retries += 1;
                    if retries > MAX_RETRIES {
                        return Err(format!("no ACK after {MAX_RETRIES} retransmissions of block {base}"));
                    }
                    break;
                }
            }
        }
    }
    Ok(Sent::Whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_blksize_cap_longest_prefix() {
        let caps = vec![
            BlksizeCap { network: Ipv4Addr::new(10, 0, 0, 0), prefix: 8, blksize: 1432 },
            BlksizeCap { network: Ipv4Addr::new(10, 0, 5, 7), prefix: 32, blksize: 1024 },
        ];
        assert_eq!(blksize_for(&caps, "10.0.5.7".parse().unwrap()), 1024);
        assert_eq!(blksize_for(&caps, "10.1.2.3".parse().unwrap()), 1432);
        assert_eq!(blksize_for(&caps, "192.168.1.1".parse().unwrap()), MAX_BLOCK_SIZE);
    }
}
