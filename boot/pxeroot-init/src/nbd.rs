//! The NBD handshake as the kernel needs it (fixed newstyle, NBD_OPT_GO, no
//! structured replies: the kernel speaks simple replies only), over a
//! blocking socket, with the server's shared codec (`nbd-wire`).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use nbd_wire::client::{parse_greeting, parse_info_export, OptionReplyHeader};
use nbd_wire::consts::*;
use nbd_wire::handshake::{ClientOption, InfoRequest};
use nbd_wire::limits::{GREETING_LEN, OPTION_REPLY_HEADER_LEN};

/// How long one connection attempt and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive idle time: notice a dead server within about a minute.
const KEEPALIVE_IDLE_SECS: libc::c_int = 15;

/// What the server said about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    pub size: u64,
    pub flags: u16,
}

#[derive(Debug)]
pub enum HandshakeError {
    Io(io::Error),
    Protocol(nbd_wire::WireError),
    /// The server refused the export; its message says why.
    Refused {
        reply_type: u32,
        message: String,
    },
    NoExportInfo,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Protocol(e) => write!(f, "protocol error: {e}"),
            HandshakeError::Refused { reply_type, message } => {
                let kind = match *reply_type {
                    REP_ERR_UNKNOWN => "unknown export",
                    REP_ERR_POLICY => "refused by policy",
                    _ => "refused",
                };
                write!(f, "server {kind}: {message}")
            }
            HandshakeError::NoExportInfo => write!(f, "server acknowledged GO without export information"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::Io(e) => Some(e),
            HandshakeError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

impl From<nbd_wire::WireError> for HandshakeError {
    fn from(e: nbd_wire::WireError) -> Self {
        HandshakeError::Protocol(e)
    }
}

/// Connect to `server` and negotiate `export`; the socket is then ready to
/// hand to the kernel.
pub fn connect(server: SocketAddrV4, export: &str) -> Result<(TcpStream, Export), HandshakeError> {
    let mut s = TcpStream::connect_timeout(&server.into(), CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    set_keepalive(&s)?;
    let mut g = [0u8; GREETING_LEN];
    s.read_exact(&mut g)?;
    let (greeting, _) = parse_greeting(&g)?.ok_or(nbd_wire::WireError::MalformedReply { reason: "short greeting" })?;
    let mut flags = CLIENT_FLAG_FIXED_NEWSTYLE;
    if greeting.handshake_flags & FLAG_NO_ZEROES != 0 {
        flags |= CLIENT_FLAG_NO_ZEROES;
    }
    let mut out = flags.to_be_bytes().to_vec();
    ClientOption::Go { name: export.to_string(), requests: vec![InfoRequest::BlockSize] }.encode(&mut out);
    s.write_all(&out)?;
    let mut info = None;
    loop {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h)?;
        let (hdr, _) = OptionReplyHeader::parse(&h)?.ok_or(nbd_wire::WireError::MalformedReply { reason: "short reply" })?;
        // Bounded by MAX_OPTION_DATA in the parser.
        let mut data = vec![0u8; hdr.length as usize];
        s.read_exact(&mut data)?;
        if hdr.is_error() {
            return Err(HandshakeError::Refused { reply_type: hdr.reply_type, message: String::from_utf8_lossy(&data).into_owned() });
        }
        if hdr.reply_type == REP_INFO {
            if let Some((size, flags)) = parse_info_export(&data)? {
                info = Some(Export { size, flags });
            }
        }
        if hdr.reply_type == REP_ACK {
            break;
        }
    }
    let export = info.ok_or(HandshakeError::NoExportInfo)?;
    // The kernel owns the socket from here: no userspace timeouts on it.
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok((s, export))
}

fn set_keepalive(s: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_SECS),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_IDLE_SECS),
    ] {
        crate::sys::setsockopt_int(fd, level, name, value)?;
    }
    Ok(())
}

// The kernel's NBD ioctls (`_IO(0xab, n)`, include/uapi/linux/nbd.h).
pub const NBD_SET_SOCK: libc::c_ulong = 0xab00;
pub const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
pub const NBD_SET_SIZE: libc::c_ulong = 0xab02;
pub const NBD_DO_IT: libc::c_ulong = 0xab03;
pub const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
pub const NBD_DISCONNECT: libc::c_ulong = 0xab08;
pub const NBD_SET_TIMEOUT: libc::c_ulong = 0xab09;
pub const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;
/// Logical block size we give the kernel. 512 lets any filesystem mount
/// (a 4096 here refuses ext4 with 1 KiB blocks, as mkfs makes for small
/// images); a 4 KiB-block filesystem still issues 4 KiB-aligned I/O.
pub const BLOCK_SIZE: u64 = 512;
