//! The NBD server shell: accept connections, run the handshake through the
//! shared codec (`nbd-wire`) and the pure negotiation in [`negotiate`], then
//! serve requests concurrently with out-of-order replies.
//!
//! Architecture invariant: this module never opens an image file; it asks
//! the registry for a [`Disk`] and calls it with requests that
//! [`validate::validate`] has already checked whole. Storage errors become
//! NBD error numbers in exactly one place, [`errno`].

pub mod negotiate;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nbd_wire::consts::*;
use nbd_wire::handshake::{self, ClientOption, OptionHeader};
use nbd_wire::limits::*;
use nbd_wire::transmission::{self, Extent as WireExtent};
use nbd_wire::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::listen::Admission;

use crate::storage::registry::{Disk, OpenError, Registry, Target};
use crate::storage::StorageError;
use negotiate::{Negotiation, Step};
use validate::{ExportView, Op};

/// A client must finish the handshake within this time (qemu-nbd uses 10 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed right after accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// Payload bytes of requests in flight on one connection (reads and writes):
/// bounds a connection's memory at about two maximum-size requests.
pub const MAX_INFLIGHT_BYTES: usize = 64 << 20;
/// Extents in one BLOCK_STATUS reply.
pub const MAX_EXTENTS: usize = 1024;
/// TCP keepalive: notice a client that died without closing.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Chunk used to serve CACHE (read and discard).
const CACHE_CHUNK: usize = 1 << 20;

/// Map a storage error to the NBD error the client sees. The only place.
pub fn errno(e: &StorageError) -> u32 {
    match e {
        StorageError::NoSpace { .. } | StorageError::OverlayFull { .. } => ENOSPC,
        StorageError::FastZeroUnsupported => ENOTSUP,
        _ => EIO,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
    #[error("protocol violation")]
    Wire(#[from] nbd_wire::WireError),
    #[error("handshake did not finish within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("client sent more than {MAX_OPTIONS_PER_HANDSHAKE} options")]
    TooManyOptions,
}

/// Bind every address (port 0 picks a free port; see `local_addr`).
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, NbdError> {
    let mut out = Vec::new();
    for &addr in addrs {
        out.push(TcpListener::bind(addr).await.map_err(|error| {
            crate::listen::BindError::new("NBD", addr, addr.port(), error, "set nbd.listen (pxeroot nbd: --listen) to another address")
        })?);
    }
    Ok(out)
}

/// Serve until `shutdown` is cancelled, then stop accepting, let in-flight
/// requests finish (bounded by [`crate::listen::DRAIN_TIMEOUT`]) and flush every overlay.
pub async fn serve(listeners: Vec<TcpListener>, registry: Arc<Registry>, shutdown: CancellationToken) {
    let admission = Admission::new("NBD", "connections", MAX_CONNECTIONS);
    let mut accepters = Vec::new();
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "NBD listening");
        }
        let (registry, shutdown, admission) = (registry.clone(), shutdown.clone(), admission.clone());
        accepters.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    a = listener.accept() => a,
                };
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the limit: closed at once (NBD has no way to say
                // "busy" before its greeting).
                let Some(permit) = admission.try_admit(&peer) else { continue };
                let (registry, shutdown) = (registry.clone(), shutdown.clone());
                admission.spawn(permit, tracing::info_span!("nbd", %peer), async move {
                    if let Err(e) = connection(stream, registry, shutdown).await {
                        warn!(error = %format_chain(&e), "connection closed with an error");
                    }
                });
            }
        }));
    }
    shutdown.cancelled().await;
    for a in accepters {
        let _ = a.await;
    }
    admission.drain().await;
    // fdatasync on every open overlay: on the blocking pool, like FLUSH.
    let failed = tokio::task::spawn_blocking(move || registry.flush_all()).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the shutdown flush task failed");
        Vec::new()
    });
    for (mac, e) in failed {
        tracing::error!(%mac, error = %format_chain(&e), "flushing overlay at shutdown failed");
    }
}

/// An error and its causes on one line.
pub fn format_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn connection(stream: TcpStream, registry: Arc<Registry>, shutdown: CancellationToken) -> Result<(), NbdError> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(&stream);
    sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(KEEPALIVE).with_interval(KEEPALIVE))?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let peer = rd.get_ref().peer_addr().ok().map(|a| a.ip());
    let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut rd, &mut wr, &registry, peer))
        .await
        .map_err(|_| NbdError::HandshakeTimeout)??;
    let Some((disk, neg, target)) = opened else { return Ok(()) };
    let span = match &target {
        Target::Client(mac) => tracing::info_span!("client", %mac),
        Target::Image(name) => tracing::info_span!("image", export = %name),
    };
    async move {
        info!(read_only = disk.read_only(), structured = neg.structured, "NBD session opened");
        let started = std::time::Instant::now();
        let mut stats = SessionStats::default();
        let result = transmission(rd, wr, disk, &neg, shutdown, &mut stats).await;
        info!(
            seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
            reads = stats.reads,
            read_bytes = stats.read_bytes,
            writes = stats.writes,
            written_bytes = stats.written_bytes,
            flushes = stats.flushes,
            other = stats.other,
            refused = stats.refused,
            "NBD session closed"
        );
        result
    }
    .instrument(span)
    .await
}

async fn handshake(
    rd: &mut BufReader<OwnedReadHalf>,
    wr: &mut OwnedWriteHalf,
    registry: &Arc<Registry>,
    peer: Option<std::net::IpAddr>,
) -> Result<Option<(Disk, Negotiation, Target)>, NbdError> {
    wr.write_all(&handshake::greeting()).await?;
    let mut flags = [0u8; 4];
    rd.read_exact(&mut flags).await?;
    let (flags, _) = handshake::parse_client_flags(&flags)?.ok_or(nbd_wire::WireError::MalformedReply { reason: "short" })?;
    let mut neg = Negotiation { peer, no_zeroes: flags.no_zeroes, ..Negotiation::default() };
    for _ in 0..MAX_OPTIONS_PER_HANDSHAKE {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        rd.read_exact(&mut hdr).await?;
        let Some((h, _)) = OptionHeader::parse(&hdr)? else { unreachable_short() };
        let mut data = vec![0u8; h.length as usize];
        rd.read_exact(&mut data).await?;
        let opt = match ClientOption::parse(h.option, &data) {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "malformed option");
                let mut out = Vec::new();
                handshake::option_error(&mut out, h.option, REP_ERR_INVALID, &e.to_string());
                wr.write_all(&out).await?;
                continue;
            }
        };
        debug!(?opt, "option");
        match neg.on_option(opt, registry.as_ref()) {
            Step::Reply(out) => wr.write_all(&out).await?,
            Step::Close(out) => {
                wr.write_all(&out).await?;
                return Ok(None);
            }
            Step::Open(req) if req.is_info() => {
                let size = registry.catalogue().size(&req.target).unwrap_or(0);
                let ro = matches!(req.target, Target::Image(_));
                wr.write_all(&neg.opened(&req, size, ro, &registry.catalogue().description(&req.target))).await?;
            }
            Step::Open(req) => {
                let (reg, target) = (registry.clone(), req.target.clone());
                let opened =
                    tokio::task::spawn_blocking(move || reg.open(&target)).await.unwrap_or_else(|e| Err(OpenError::Task(e.to_string())));
                match opened {
                    Ok(disk) => {
                        let desc = registry.catalogue().description(&req.target);
                        wr.write_all(&neg.opened(&req, disk.size(), disk.read_only(), &desc)).await?;
                        return Ok(Some((disk, neg, req.target)));
                    }
                    Err(e) => {
                        let msg = format_chain(&e);
                        warn!(export = %req.name, error = %msg, "export could not be opened");
                        match neg.open_failed(&req, &msg) {
                            Step::Reply(out) => wr.write_all(&out).await?,
                            _ => return Ok(None),
                        }
                    }
                }
            }
        }
    }
    Err(NbdError::TooManyOptions)
}

fn unreachable_short() -> ! {
    unreachable!("a full option header was read")
}

/// What one session asked for, logged when it closes: how much a boot
/// read and wrote, and in how many requests.
#[derive(Debug, Default)]
struct SessionStats {
    reads: u64,
    read_bytes: u64,
    writes: u64,
    written_bytes: u64,
    flushes: u64,
    /// TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS.
    other: u64,
    /// Requests refused with an error before they ran (out of range, bad
    /// flags, a write to a read-only export, ...).
    refused: u64,
}

impl SessionStats {
    fn count(&mut self, op: &Op) {
        match *op {
            Op::Read { length, .. } => {
                self.reads += 1;
                self.read_bytes += u64::from(length);
            }
            Op::Write { length, .. } => {
                self.writes += 1;
                self.written_bytes += u64::from(length);
            }
            Op::Flush => self.flushes += 1,
            Op::Trim { .. } | Op::Zero { .. } | Op::Cache { .. } | Op::BlockStatus { .. } => self.other += 1,
            Op::Disconnect => {}
        }
    }
}

/// What every request task of one connection shares.
struct Conn {
    disk: Disk,
    writer: Mutex<OwnedWriteHalf>,
    structured: bool,
    pool: BufPool,
}

/// Reusable request and reply buffers for one connection. A fresh zeroed
/// 1 MiB buffer per request costs page faults and a memset each time; a
/// pooled one is already initialised and only overwritten.
#[derive(Default)]
struct BufPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Bytes kept in one connection's pool; larger buffers are freed.
const MAX_POOLED_BYTES: usize = MAX_INFLIGHT_BYTES;

impl BufPool {
    /// A buffer of exactly `len` bytes (contents unspecified).
    fn get(&self, len: usize) -> Vec<u8> {
        let reuse = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            match free.iter().position(|b| b.capacity() >= len) {
                Some(i) => Some(free.swap_remove(i)),
                None => free.pop(),
            }
        };
        let mut buf = reuse.unwrap_or_default();
        // Bytes up to the buffer's old length are initialised already; only
        // growth is zero-filled.
        buf.resize(len, 0);
        buf
    }

    fn put(&self, mut buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let pooled: usize = free.iter().map(|b| b.capacity()).sum();
        if pooled + buf.capacity() <= MAX_POOLED_BYTES {
            // Keep the initialised length so the next `resize` is free.
            let cap = buf.capacity();
            buf.resize(cap, 0);
            free.push(buf);
        }
    }
}

impl Conn {
    async fn send(&self, bytes: &[u8]) {
        let mut w = self.writer.lock().await;
        if let Err(e) = w.write_all(bytes).await {
            debug!(error = %e, "reply could not be sent");
        }
    }

    /// An error reply (simple, or an ERROR chunk when structured replies
    /// were negotiated and the command is one that needs them).
    async fn send_error(&self, cookie: u64, errno: u32, message: &str, structured_cmd: bool) {
        if self.structured && structured_cmd {
            let mut out = Vec::new();
            transmission::error_chunk(&mut out, cookie, errno, message);
            self.send(&out).await;
        } else {
            self.send(&transmission::simple_reply(errno, cookie)).await;
        }
    }
}

async fn transmission(
    mut rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    disk: Disk,
    neg: &Negotiation,
    shutdown: CancellationToken,
    stats: &mut SessionStats,
) -> Result<(), NbdError> {
    let view =
        ExportView { size: disk.size(), read_only: disk.read_only(), structured: neg.structured, base_allocation: neg.base_allocation };
    let conn = Arc::new(Conn { disk, writer: Mutex::new(wr), structured: neg.structured, pool: BufPool::default() });
    let budget = Arc::new(Semaphore::new(MAX_INFLIGHT_BYTES));
    let tasks = TaskTracker::new();
    let result = loop {
        let mut hdr = [0u8; REQUEST_LEN];
        let read = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = rd.read_exact(&mut hdr) => r,
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e.into()),
        }
        let req = match Request::parse(&hdr) {
            Ok(Some((r, _))) => r,
            Ok(None) => unreachable_short(),
            Err(e) => break Err(e.into()),
        };
        debug!(command = ?req.command, offset = req.offset, length = req.length, cookie = req.cookie, "request");
        let op = match validate::validate(&req, &view) {
            Ok(Op::Disconnect) => {
                info!("client sent DISC: finishing in-flight requests and closing");
                break Ok(());
            }
            Ok(op) => {
                stats.count(&op);
                op
            }
            Err(rej) => {
                stats.refused += 1;
                debug!(errno = rej.errno, message = %rej.message, "request refused");
                if rej.close {
                    conn.send_error(req.cookie, rej.errno, &rej.message, false).await;
                    break Ok(());
                }
                if req.payload_len() > 0 {
                    // Bounded by MAX_PAYLOAD (validate closes otherwise).
                    let mut sink = vec![0u8; req.payload_len() as usize];
                    if let Err(e) = rd.read_exact(&mut sink).await {
                        break Err(e.into());
                    }
                }
                let structured_cmd = matches!(req.command, nbd_wire::Command::Read | nbd_wire::Command::BlockStatus);
                conn.send_error(req.cookie, rej.errno, &rej.message, structured_cmd).await;
                continue;
            }
        };
        let weight = match op {
            Op::Read { length, .. } | Op::Write { length, .. } => (length as usize).clamp(1, MAX_INFLIGHT_BYTES),
            _ => 1,
        };
        let Ok(permit) = budget.clone().acquire_many_owned(weight as u32).await else { break Ok(()) };
        let payload = if let Op::Write { length, .. } = op {
            let mut buf = conn.pool.get(length as usize);
            if let Err(e) = rd.read_exact(&mut buf).await {
                break Err(e.into());
            }
            buf
        } else {
            Vec::new()
        };
        if rd.buffer().len() < REQUEST_LEN {
            // Nothing else is waiting to be read (a queue depth of one, as
            // most of a booting client's I/O is): serve it right here and
            // save a task handoff between threads.
            execute(&conn, req.cookie, op, payload).await;
            drop(permit);
        } else {
            let conn = conn.clone();
            tasks.spawn(async move {
                execute(&conn, req.cookie, op, payload).await;
                drop(permit);
            });
        }
    };
    tasks.close();
    tasks.wait().await;
    // The last connection of a MAC flushes and closes its overlay as it lets
    // go (Registry::detach): syncs, like FLUSH, so on the blocking pool.
    let _ = tokio::task::spawn_blocking(move || drop(conn)).await;
    result
}

/// Make the connection's writes durable. The fdatasync calls block for as
/// long as the disk takes, tens of milliseconds on a slow or busy one: on the
/// blocking pool, never on a runtime worker. Inline, two clients flushing on
/// a disk whose sync takes 30 ms held both workers of a 2-core server and cut
/// a third client's reads from thousands per second to 80, p99 61 ms
/// (BENCHMARKS.md); the handoff costs 14% of QD1 flushes on a fast disk.
async fn flush(conn: &Arc<Conn>) -> Result<(), StorageError> {
    let Some(overlay) = conn.disk.writable() else { return Ok(()) };
    let c = conn.clone();
    match tokio::task::spawn_blocking(move || c.disk.writable().map_or(Ok(()), |o| o.flush())).await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Io {
            op: "flush",
            path: overlay.path().to_path_buf(),
            offset: 0,
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// A change's result, made durable first when the request carried FUA.
async fn durable(conn: &Arc<Conn>, fua: bool, r: Result<(), StorageError>) -> Result<(), StorageError> {
    match r {
        Ok(()) if fua => flush(conn).await,
        r => r,
    }
}

async fn execute(conn: &Arc<Conn>, cookie: u64, op: Op, payload: Vec<u8>) {
    let disk = &conn.disk;
    let overlay = disk.writable();
    let result: Result<(), StorageError> = match op {
        Op::Read { offset, length } => {
            let hdr = if conn.structured { CHUNK_HEADER_LEN + 8 } else { SIMPLE_REPLY_LEN };
            let mut buf = conn.pool.get(hdr + length as usize);
            match disk.read(&mut buf[hdr..], offset) {
                Ok(()) => {
                    if conn.structured {
                        let mut prefix = Vec::with_capacity(hdr);
                        transmission::offset_data_prefix(&mut prefix, cookie, offset, length, true);
                        buf[..hdr].copy_from_slice(&prefix);
                    } else {
                        buf[..hdr].copy_from_slice(&transmission::simple_reply(0, cookie));
                    }
                    conn.send(&buf).await;
                    conn.pool.put(buf);
                    return;
                }
                Err(e) => {
                    conn.pool.put(buf);
                    Err(e)
                }
            }
        }
        Op::Write { offset, fua, .. } => {
            let r = overlay.map_or(Ok(()), |o| o.write(&payload, offset));
            conn.pool.put(payload);
            durable(conn, fua, r).await
        }
        Op::Flush => flush(conn).await,
        Op::Trim { offset, length, fua } => durable(conn, fua, overlay.map_or(Ok(()), |o| o.trim(offset, length as u64))).await,
        Op::Zero { offset, length, fua, no_hole, fast } => {
            durable(conn, fua, overlay.map_or(Ok(()), |o| o.write_zeroes(offset, length as u64, no_hole, fast))).await
        }
        Op::Cache { offset, length } => {
            let mut scratch = vec![0u8; CACHE_CHUNK.min(length as usize)];
            let mut pos = offset;
            let end = offset + length as u64;
            let mut r = Ok(());
            while pos < end && r.is_ok() {
                let n = ((end - pos) as usize).min(scratch.len());
                r = disk.read(&mut scratch[..n], pos);
                pos += n as u64;
            }
            r
        }
        Op::BlockStatus { offset, length, req_one } => match disk.extents(offset, length as u64) {
            Ok(extents) => {
                let mut wire: Vec<WireExtent> = Vec::new();
                for e in extents {
                    let flags = if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 };
                    // Extents never exceed the request's u32 length.
                    wire.push(WireExtent { length: e.len as u32, flags });
                    if req_one || wire.len() >= MAX_EXTENTS {
                        break;
                    }
                }
                let mut out = Vec::new();
                transmission::block_status_chunk(&mut out, cookie, negotiate::BASE_ALLOCATION_ID, &wire);
                conn.send(&out).await;
                return;
            }
            Err(e) => Err(e),
        },
        Op::Disconnect => Ok(()),
    };
    match result {
        Ok(()) => conn.send(&transmission::simple_reply(0, cookie)).await,
        Err(e) => {
            let msg = format_chain(&e);
            warn!(error = %msg, ?op, "request failed");
            let structured_cmd = matches!(op, Op::Read { .. } | Op::BlockStatus { .. });
            conn.send_error(cookie, errno(&e), &msg, structured_cmd).await;
        }
    }
}
