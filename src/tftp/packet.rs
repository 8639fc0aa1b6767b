//! TFTP packets and option negotiation, sans-IO (RFC 1350, 2347, 2348,
//! 2349, 7440): parse what clients send, build what the server sends, and
//! decide the options of a transfer from the request, the file size and our
//! caps.

use std::time::Duration;

pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

pub const ERR_NOT_DEFINED: u16 = 0;
pub const ERR_NOT_FOUND: u16 = 1;
pub const ERR_ACCESS: u16 = 2;
pub const ERR_ILLEGAL: u16 = 4;
pub const ERR_OPTIONS: u16 = 8;

/// RFC 1350's block size, used when the client asks for none.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348's bounds.
pub const MIN_BLKSIZE: u16 = 8;
pub const MAX_BLKSIZE: u16 = 65464;
/// RFC 2349's timeout bounds (seconds).
pub const MIN_TIMEOUT: u64 = 1;
pub const MAX_TIMEOUT: u64 = 255;
/// Retransmission timeout when the client asks for none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Options per request we look at (real clients send up to four).
pub const MAX_OPTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read { file: String, options: Vec<(String, String)> },
    Write { file: String },
    Ack(u16),
    Error { code: u16, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short")]
    Short,
    #[error("unknown or unexpected opcode {0}")]
    Opcode(u16),
    #[error("malformed request")]
    Malformed,
}

fn strings(b: &[u8]) -> Result<Vec<String>, PacketError> {
    let b = b.strip_suffix(&[0]).ok_or(PacketError::Malformed)?;
    b.split(|&c| c == 0).map(|s| String::from_utf8(s.to_vec()).map_err(|_| PacketError::Malformed)).collect()
}

pub fn parse(b: &[u8]) -> Result<Packet, PacketError> {
    if b.len() < 4 {
        return Err(PacketError::Short);
    }
    let op = u16::from_be_bytes([b[0], b[1]]);
    match op {
        OP_RRQ | OP_WRQ => {
            let s = strings(&b[2..])?;
            if s.len() < 2 || s.len() % 2 != 0 || s.len() > 2 + 2 * MAX_OPTIONS {
                return Err(PacketError::Malformed);
            }
            let file = s[0].clone();
            if op == OP_WRQ {
                return Ok(Packet::Write { file });
            }
            let options = s[2..].chunks(2).map(|kv| (kv[0].to_ascii_lowercase(), kv[1].clone())).collect();
            Ok(Packet::Read { file, options })
        }
        OP_ACK => Ok(Packet::Ack(u16::from_be_bytes([b[2], b[3]]))),
        OP_ERROR => Ok(Packet::Error {
            code: u16::from_be_bytes([b[2], b[3]]),
            message: String::from_utf8_lossy(b[4..].strip_suffix(&[0]).unwrap_or(&b[4..])).into_owned(),
        }),
        other => Err(PacketError::Opcode(other)),
    }
}

/// A DATA packet: header and payload in one buffer.
pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&OP_DATA.to_be_bytes());
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut p = OP_OACK.to_be_bytes().to_vec();
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut p = OP_ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

/// What a transfer runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
}

/// Decide a transfer's options: the client's requests within our caps
/// (`blksize_cap`, for this client; `max_window`). Returns the options and
/// the OACK entries (empty: no OACK, plain RFC 1350). Unknown options are
/// ignored, as RFC 2347 asks.
pub fn negotiate(options: &[(String, String)], size: u64, blksize_cap: u16, max_window: u16) -> (Transfer, Vec<(String, String)>) {
    let mut t = Transfer { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout: DEFAULT_TIMEOUT };
    let mut ack = Vec::new();
    for (k, v) in options {
        match k.as_str() {
            "blksize" => {
                if let Ok(n) = v.parse::<u32>() {
                    if n >= MIN_BLKSIZE as u32 {
                        t.blksize = n.min(MAX_BLKSIZE as u32).min(blksize_cap as u32) as u16;
                        ack.push((k.clone(), t.blksize.to_string()));
                    }
                }
            }
            "tsize" => ack.push((k.clone(), size.to_string())),
            "timeout" => {
                if let Ok(n) = v.parse::<u64>() {
                    if (MIN_TIMEOUT..=MAX_TIMEOUT).contains(&n) {
                        t.timeout = Duration::from_secs(n);
                        ack.push((k.clone(), n.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(n) = v.parse::<u32>() {
                    if n >= 1 {
                        t.windowsize = n.min(max_window as u32) as u16;
                        ack.push((k.clone(), t.windowsize.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    (t, ack)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(parts: &[&str]) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        for s in parts {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn test_parse_rrq_with_options_and_refuse_garbage() {
        let p = parse(&rrq(&["pxeroot/x.ipxe", "octet", "BLKSIZE", "1468", "tsize", "0"])).unwrap();
        assert_eq!(
            p,
            Packet::Read { file: "pxeroot/x.ipxe".into(), options: vec![("blksize".into(), "1468".into()), ("tsize".into(), "0".into())] }
        );
        assert_eq!(parse(&[0, 4, 0, 7]).unwrap(), Packet::Ack(7));
        assert!(parse(&[0, 1]).is_err());
        assert!(parse(&rrq(&["file"])).is_err(), "no mode");
        assert!(parse(&rrq(&["file", "octet", "blksize"])).is_err(), "option without value");
        assert!(parse(&[0, 9, 0, 0]).is_err());
        let mut no_nul = rrq(&["file", "octet"]);
        no_nul.pop();
        assert!(parse(&no_nul).is_err());
    }

    #[test]
    fn test_negotiate_caps_and_tsize() {
        let opts = vec![
            ("blksize".into(), "65464".into()),
            ("tsize".into(), "0".into()),
            ("windowsize".into(), "500".into()),
            ("timeout".into(), "3".into()),
            ("foo".into(), "1".into()),
        ];
        let (t, ack) = negotiate(&opts, 12345, 1024, 64);
        assert_eq!(t, Transfer { blksize: 1024, windowsize: 64, timeout: Duration::from_secs(3) });
        assert_eq!(
            ack,
            vec![
                ("blksize".into(), "1024".into()),
                ("tsize".into(), "12345".into()),
                ("windowsize".into(), "64".into()),
                ("timeout".into(), "3".into())
            ]
        );
        let (t, ack) = negotiate(&[], 1, 1468, 64);
        assert_eq!((t.blksize, t.windowsize, ack.len()), (512, 1, 0));
        let (_, ack) = negotiate(&[("timeout".into(), "0".into()), ("blksize".into(), "4".into())], 1, 1468, 64);
        assert!(ack.is_empty(), "out-of-range options are not acknowledged");
    }

    #[test]
    fn test_packet_builders() {
        assert_eq!(data(1, b"ab"), vec![0, 3, 0, 1, b'a', b'b']);
        assert_eq!(error(ERR_ACCESS, "no"), vec![0, 5, 0, 2, b'n', b'o', 0]);
        assert_eq!(oack(&[("tsize".into(), "5".into())]), b"\x00\x06tsize\x005\x00".to_vec());
    }
}
