//! TFTP: async-tftp's server with our own `Handler` over the boot-file
//! resolver. Read-only: write requests are refused. blksize, tsize and
//! windowsize are negotiated by async-tftp within the limits set here.
//! Each finished transfer is logged (client, name, size, duration): the
//! boot timeline a person debugging "why doesn't it boot" needs.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures_lite::io::{AsyncRead, Cursor};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bootfiles::{BootFile, ResolveError, Resolver};

/// Largest block size we agree to: the largest that fits an unfragmented
/// 1500-byte Ethernet frame (RFC 2348 allows up to 65464).
pub const MAX_BLOCK_SIZE: u16 = 1468;
/// Largest window (RFC 7440) we agree to.
pub const MAX_WINDOW_SIZE: u16 = 64;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("cannot start TFTP on {addr}")]
    Start {
        addr: SocketAddr,
        #[source]
        source: async_tftp::Error,
    },
    #[error("TFTP server stopped")]
    Serve(#[source] async_tftp::Error),
}

/// What a transfer reads from: a file or a rendered script. Logs once at EOF.
pub struct Transfer {
    inner: Source,
    client: SocketAddr,
    name: String,
    size: u64,
    started: Instant,
    done: bool,
}

enum Source {
    File(blocking::Unblock<std::fs::File>),
    Script(Cursor<Vec<u8>>),
}

impl AsyncRead for Transfer {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = match &mut this.inner {
            Source::File(f) => Pin::new(f).poll_read(cx, buf),
            Source::Script(c) => Pin::new(c).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(0)) = r {
            if !this.done && !buf.is_empty() {
                this.done = true;
                info!(client = %this.client, file = %this.name, bytes = this.size,
                      secs = this.started.elapsed().as_secs_f64(), "TFTP transfer finished");
            }
        }
        r
    }
}

pub struct TftpHandler {
    resolver: Arc<Resolver>,
}

impl Handler for TftpHandler {
    type Reader = Transfer;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(&mut self, client: &SocketAddr, path: &Path) -> Result<(Transfer, Option<u64>), packet::Error> {
        let name = path.to_string_lossy().into_owned();
        let resolved = self.resolver.resolve(&name);
        let (inner, size) = match resolved {
            Ok(BootFile::File(p)) => {
                let f = std::fs::File::open(&p).map_err(|_| packet::Error::FileNotFound)?;
                let size = f.metadata().map(|m| m.len()).map_err(|_| packet::Error::FileNotFound)?;
                (Source::File(blocking::Unblock::new(f)), size)
            }
            Ok(BootFile::Script { mac, text }) => {
                // Fetching its script is where a client's new boot starts.
                info!(%mac, %client, "boot script requested over TFTP: new boot");
                match self.resolver.registry().new_boot(mac, client.ip()) {
                    Ok(true) => info!(%mac, "ephemeral overlay reset for the new boot"),
                    Ok(false) => {}
                    Err(e) => warn!(%mac, error = %e, "resetting the ephemeral overlay failed"),
                }
                let size = text.len() as u64;
                (Source::Script(Cursor::new(text.into_bytes())), size)
            }
            Err(e) => {
                match &e {
                    ResolveError::Refused { .. } => warn!(%client, error = %e, "TFTP request refused"),
                    ResolveError::NotFound { .. } => debug!(%client, error = %e, "TFTP file not found"),
                }
                return Err(match e {
                    ResolveError::Refused { .. } => packet::Error::PermissionDenied,
                    ResolveError::NotFound { .. } => packet::Error::FileNotFound,
                });
            }
        };
        debug!(%client, file = %name, size, "TFTP read request");
        Ok((Transfer { inner, client: *client, name, size, started: Instant::now(), done: false }, Some(size)))
    }

    async fn write_req_open(&mut self, client: &SocketAddr, path: &Path, _size: Option<u64>) -> Result<futures_lite::io::Sink, packet::Error> {
        warn!(%client, file = %path.display(), "TFTP write request refused (read-only server)");
        Err(packet::Error::PermissionDenied)
    }
}

/// Serve TFTP on `addr` until `shutdown`.
pub async fn serve(addr: SocketAddr, resolver: Arc<Resolver>, shutdown: CancellationToken) -> Result<(), TftpError> {
    let server = TftpServerBuilder::with_handler(TftpHandler { resolver })
        .bind(addr)
        .block_size_limit(MAX_BLOCK_SIZE)
        .window_size_limit(MAX_WINDOW_SIZE)
        .build()
        .await
        .map_err(|source| TftpError::Start { addr, source })?;
    info!(%addr, "TFTP listening");
    tokio::select! {
        r = server.serve() => r.map_err(TftpError::Serve),
        _ = shutdown.cancelled() => Ok(()),
    }
}
