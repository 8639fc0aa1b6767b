//! A misbehaving peer loses only its own connection: malformed handshakes,
//! bad magic, oversized and out-of-range requests, unknown commands and
//! options. After each, the daemon still serves a well-behaved client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use nbd_wire::consts::*;
use nbd_wire::handshake::{ClientOption, OptionHeader};
use nbd_wire::limits::{MAX_OPTION_DATA, MAX_PAYLOAD};
use nbd_wire::{Command as Cmd, Request};

const MAC: &str = "52:54:00:00:0b:01";

fn raw(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    s
}

/// Read until the server closes; returns what it sent.
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn option_reply_type(s: &mut TcpStream) -> u32 {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    u32::from_be_bytes(h[12..16].try_into().unwrap())
}

fn still_serves(port: u16) {
    let mut c = Client::connect(port, MAC).expect("healthy client");
    assert_eq!(c.write(0, &[7u8; 4096]), 0);
    assert_eq!(c.read(0, 4096), (0, vec![7u8; 4096]));
}

#[test]
fn test_bad_handshakes_close_only_that_connection() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, 4 << 20, 2);
    let s = Server::adhoc(&base, &d.path().join("state"), &[]);

    // Unknown client flags: dropped.
    let mut c = raw(s.port);
    c.write_all(&0xffu32.to_be_bytes()).unwrap();
    assert!(until_closed(&mut c).is_empty());
    still_serves(s.port);

    // Bad option magic: dropped.
    let mut c = raw(s.port);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    c.write_all(&[0x55; 16]).unwrap();
    assert!(until_closed(&mut c).is_empty());
    still_serves(s.port);

    // An option announcing more than the cap: dropped before allocating it.
    let mut c = raw(s.port);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let mut h = Vec::new();
    OptionHeader { option: OPT_GO, length: MAX_OPTION_DATA + 1 }.encode(&mut h);
    c.write_all(&h).unwrap();
    assert!(until_closed(&mut c).is_empty());
    still_serves(s.port);

    // Unknown option: ERR_UNSUP and the session goes on; a malformed GO:
    // ERR_INVALID and it goes on; STARTTLS: ERR_UNSUP; then ABORT: ACK.
    let mut c = raw(s.port);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let mut b = Vec::new();
    ClientOption::Unknown(99).encode(&mut b);
    c.write_all(&b).unwrap();
    assert_eq!(option_reply_type(&mut c), REP_ERR_UNSUP);
    let mut b = Vec::new();
    OptionHeader { option: OPT_GO, length: 3 }.encode(&mut b);
    b.extend_from_slice(&[0, 0, 9]);
    c.write_all(&b).unwrap();
    assert_eq!(option_reply_type(&mut c), REP_ERR_INVALID);
    let mut b = Vec::new();
    ClientOption::StartTls.encode(&mut b);
    c.write_all(&b).unwrap();
    assert_eq!(option_reply_type(&mut c), REP_ERR_UNSUP);
    let mut b = Vec::new();
    ClientOption::Go { name: "no-such-export".into(), requests: vec![] }.encode(&mut b);
    c.write_all(&b).unwrap();
    assert_eq!(option_reply_type(&mut c), REP_ERR_UNKNOWN);
    let mut b = Vec::new();
    ClientOption::Abort.encode(&mut b);
    c.write_all(&b).unwrap();
    assert_eq!(option_reply_type(&mut c), REP_ACK);
    until_closed(&mut c);

    // EXPORT_NAME of an unknown export: closed (it has no error reply).
    let mut c = raw(s.port);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let mut b = Vec::new();
    ClientOption::ExportName("nope".into()).encode(&mut b);
    c.write_all(&b).unwrap();
    assert!(until_closed(&mut c).is_empty());

    // A client that connects and says nothing is cut off after the
    // handshake timeout; meanwhile others are served.
    let mut silent = raw(s.port);
    still_serves(s.port);
    let t = std::time::Instant::now();
    assert!(until_closed(&mut silent).is_empty());
    assert!(t.elapsed() >= Duration::from_secs(5), "closed too early");
    still_serves(s.port);
}

#[test]
fn test_bad_requests_get_errors_and_session_continues() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    let size = 4u64 << 20;
    make_raw_base(&base, size as usize, 2);
    let s = Server::adhoc(&base, &d.path().join("state"), &[]);
    let mut c = Client::connect(s.port, MAC).unwrap();

    let cases: Vec<(Cmd, u16, u64, u32, u32)> = vec![
        (Cmd::Read, 0, size - 1, 2, EINVAL),        // read past the end
        (Cmd::Read, 0, u64::MAX, 1, EINVAL),        // offset overflow
        (Cmd::Read, 0, 0, MAX_PAYLOAD + 1, EINVAL), // oversized read
        (Cmd::Trim, 0, size, 1, EINVAL),            // trim past the end
        (Cmd::Unknown(42), 0, 0, 0, EINVAL),        // unknown command
        (Cmd::Read, 0x40, 0, 1, EINVAL),            // unknown flag
        (Cmd::BlockStatus, 0, 0, 1, EINVAL),        // no meta context
        (Cmd::Flush, 0, 1, 0, EINVAL),              // flush with an offset
    ];
    for (cmd, flags, off, len, want) in cases {
        c.send(cmd, flags, off, len, &[]).unwrap();
        let (_, e, _) = c.recv(0).unwrap();
        assert_eq!(e, want, "{cmd:?} flags {flags:x} at {off} len {len}");
    }
    // Write past the end: ENOSPC, and its payload is consumed.
    c.send(Cmd::Write, 0, size - 512, 1024, &[1u8; 1024]).unwrap();
    assert_eq!(c.recv(0).unwrap().1, ENOSPC);
    // A zero-length read is fine; the session is still in sync.
    c.send(Cmd::Read, 0, 0, 0, &[]).unwrap();
    assert_eq!(c.recv(0).unwrap().1, 0);
    assert_eq!(c.write(4096, &[9u8; 512]), 0);
    assert_eq!(c.read(4096, 512), (0, vec![9u8; 512]));

    // Read-only export: writes get EPERM.
    let mut ro = Client::connect(s.port, "base").unwrap();
    assert_eq!(ro.flags & TFLAG_READ_ONLY, TFLAG_READ_ONLY);
    assert_eq!(ro.write(0, &[1u8; 512]), EPERM);
    assert_eq!(ro.read(0, 16).0, 0);

    // An oversized write cannot be skipped: error reply, then close.
    let mut big = Client::connect(s.port, MAC).unwrap();
    let r = Request { flags: 0, command: Cmd::Write, cookie: 5, offset: 0, length: MAX_PAYLOAD + 1 };
    big.stream.write_all(&r.encode()).unwrap();
    let (_, e, _) = big.recv(0).unwrap();
    assert_eq!(e, EINVAL);
    assert!(until_closed(&mut big.stream).is_empty());

    // Bad request magic: that connection closes, nothing else.
    let mut bad = Client::connect(s.port, MAC).unwrap();
    bad.stream.write_all(&[0x11; 28]).unwrap();
    assert!(until_closed(&mut bad.stream).is_empty());

    // The first client's session is untouched.
    assert_eq!(c.read(4096, 512), (0, vec![9u8; 512]));
    still_serves(s.port);
    c.disconnect();
    assert_eq!(s.stop(), 0);
}
