//! HTTP: the boot directory and the per-client scripts, for iPXE (which
//! fetches kernels and initramfs images several times faster over HTTP than
//! over its lock-step TFTP) and UEFI HTTP boot. hyper does the protocol;
//! this module maps requests onto the boot-file resolver.
//!
//! GET and HEAD only; `Range: bytes=` (one range) with 206/416; always a
//! Content-Length; never a redirect (UEFI HTTP boot does not follow them);
//! the TFTP traversal rules (403 for refused paths, 404 for missing ones);
//! at most [`MAX_CONNECTIONS`] connections (more get 503), each bounded in
//! time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bootfiles::{BootFile, ResolveError, Resolver};
use crate::listen::Admission;

/// Connections served at once; more are answered 503 (Retry-After: 1).
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection refused with 503 may take to send its request.
pub const REFUSAL_LIFETIME: Duration = Duration::from_secs(2);
/// A client must send its request headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection may live at most this long (a slow client cannot hold a
/// slot forever; 10 minutes moves a kernel at a few KB/s).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);
/// Read size when streaming a file.
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Bind(#[from] crate::listen::BindError),
}

type Body = BoxBody<Bytes, std::io::Error>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A `Range` header that cannot be served: malformed, multiple ranges, or
/// outside the file (answered with 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A parsed `Range` header against a file of `size` bytes: `Ok(None)` for
/// no range.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let bad = |_| Unsatisfiable;
    let Some(h) = header else { return Ok(None) };
    let spec = h.trim().strip_prefix("bytes=").ok_or(Unsatisfiable)?;
    if spec.contains(',') {
        return Err(Unsatisfiable); // multiple ranges: not supported
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(bad)?;
            if n == 0 {
                return Err(Unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => (s.parse().map_err(bad)?, size.wrapping_sub(1)),
        (s, e) => (s.parse().map_err(bad)?, e.parse::<u64>().map_err(bad)?.min(size.wrapping_sub(1))),
    };
    if size == 0 || start > end || start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// Decode `%xx` escapes; `None` for malformed ones or invalid UTF-8.
fn percent_decode(p: &str) -> Option<String> {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn handle(req: Request<hyper::body::Incoming>, resolver: Arc<Resolver>, peer: SocketAddr) -> Result<Response<Body>, Infallible> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut().insert("allow", HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let Some(path) = percent_decode(req.uri().path()) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "malformed path\n"));
    };
    let resolved = resolver.resolve(&path);
    let (file, size, name) = match resolved {
        Ok(BootFile::Script { mac, text }) => {
            // A new boot writes a synced record and may wait for the
            // client's old overlay to close: off the runtime.
            let r = resolver.clone();
            let _ = tokio::task::spawn_blocking(move || r.start_boot(mac, peer, "HTTP")).await;
            let len = text.len();
            let mut r = if head { plain(StatusCode::OK, "") } else { plain(StatusCode::OK, &text) };
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
            return Ok(r);
        }
        Ok(BootFile::File(p)) => match tokio::fs::File::open(&p).await {
            Ok(f) => {
                let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                (f, size, path)
            }
            Err(_) => return Ok(plain(StatusCode::NOT_FOUND, "not found\n")),
        },
        Err(e @ ResolveError::Refused { .. }) => {
            warn!(client = %peer, error = %e, "HTTP request refused");
            return Ok(plain(StatusCode::FORBIDDEN, "forbidden\n"));
        }
        Err(e @ ResolveError::NotFound { .. }) => {
            debug!(client = %peer, error = %e, "HTTP file not found");
            return Ok(plain(StatusCode::NOT_FOUND, "not found\n"));
        }
    };
    let range = parse_range(req.headers().get(RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match range {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Err(Unsatisfiable) => {
            let mut r = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            r.headers_mut()
                .insert(CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{size}")).unwrap_or(HeaderValue::from_static("bytes */0")));
            return Ok(r);
        }
    };
    let body: Body = if head {
        Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
    } else {
        let mut f = file;
        if start > 0 && f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, "seek failed\n"));
        }
        let started = Instant::now();
        // hyper stops polling once Content-Length bytes went out, so the
        // transfer is logged with its last chunk, not at EOF.
        let stream = futures_lite::stream::unfold((f.take(len), 0u64, name.clone(), false), move |(mut f, sent, name, stop)| async move {
            if stop || sent >= len {
                return None;
            }
            let mut buf = vec![0u8; CHUNK.min((len - sent) as usize)];
            match f.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while being sent")),
                    (f, sent, name, true),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    let sent = sent + n as u64;
                    if sent == len {
                        info!(client = %peer, file = %name, bytes = sent, secs = started.elapsed().as_secs_f64(), "HTTP transfer finished");
                    }
                    Some((Ok(Frame::data(Bytes::from(buf))), (f, sent, name, false)))
                }
                Err(e) => Some((Err(e), (f, sent, name, true))),
            }
        });
        StreamBody::new(stream).boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(CONTENT_RANGE, v);
        }
    }
    Ok(r)
}

/// Serve HTTP on `addr` until `shutdown`, then let the responses under way
/// finish (idle keep-alive connections close at once), bounded by
/// [`crate::listen::DRAIN_TIMEOUT`].
pub async fn serve(addr: SocketAddr, resolver: Arc<Resolver>, shutdown: CancellationToken) -> Result<(), HttpError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        crate::listen::BindError::new("HTTP", addr, addr.port(), error, "set http.listen to another address, or http.enabled = false")
    })?;
    info!(%addr, "HTTP listening");
    let admission = Admission::new("HTTP", "connections", MAX_CONNECTIONS);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        let Some(permit) = admission.try_admit(&peer) else {
            // Read the request and answer 503, so the client sees why
            // (closing at once would reset its connection): short, bounded.
            admission.spawn_unlimited(async move {
                let svc = hyper::service::service_fn(|_req| async { Ok::<_, Infallible>(busy()) });
                let conn = builder().keep_alive(false).serve_connection(io, svc);
                let _ = tokio::time::timeout(REFUSAL_LIFETIME, conn).await;
            });
            continue;
        };
        let (resolver, shutdown) = (resolver.clone(), shutdown.clone());
        admission.spawn(permit, tracing::debug_span!("http", %peer), async move {
            let svc = hyper::service::service_fn(move |req| handle(req, resolver.clone(), peer));
            let conn = builder().serve_connection(io, svc);
            tokio::pin!(conn);
            let served = tokio::time::timeout(CONNECTION_LIFETIME, async {
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = shutdown.cancelled() => {
                        // Finish the response under way, take no other.
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                }
            });
            match served.await {
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTP connection ended with an error"),
                Err(_) => warn!(%peer, "HTTP connection closed: it outlived {CONNECTION_LIFETIME:?}"),
                Ok(Ok(())) => {}
            }
        });
    }
    admission.drain().await;
    Ok(())
}

/// The connection settings every HTTP connection shares.
fn builder() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    b
}

/// The answer to a connection over [`MAX_CONNECTIONS`].
fn busy() -> Response<Body> {
    let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections, try again\n");
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_range_forms() {
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(parse_range(Some("bytes=50-500"), 100), Ok(Some((50, 99))));
        for bad in ["bytes=100-", "bytes=5-1", "bytes=0-1,5-6", "items=0-1", "bytes=x-", "bytes=-0"] {
            assert_eq!(parse_range(Some(bad), 100), Err(Unsatisfiable), "{bad}");
        }
    }

    #[test]
    fn test_percent_decode() {
        assert_eq!(percent_decode("/a%2e%2E/b").as_deref(), Some("/a../b"));
        assert_eq!(percent_decode("/%zz"), None);
        assert_eq!(percent_decode("/%2"), None);
    }
}
