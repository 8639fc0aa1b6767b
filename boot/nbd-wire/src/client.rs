//! The client side of the handshake, as pxeroot-init and the tests speak it:
//! decode the greeting and option replies. Requests are encoded with
//! [`crate::Request::encode`] and options with [`crate::ClientOption::encode`].

use crate::consts::*;
use crate::limits::*;
use crate::{be, WireError};

/// The server's greeting, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    pub handshake_flags: u16,
}

pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Greeting, usize)>, WireError> {
    if buf.len() < GREETING_LEN {
        return Ok(None);
    }
    let magic = be::u64(buf, 0);
    if magic != NBDMAGIC {
        return Err(WireError::BadMagic { what: "NBDMAGIC", found: magic });
    }
    let opt = be::u64(buf, 8);
    if opt != IHAVEOPT {
        return Err(WireError::BadMagic { what: "IHAVEOPT (oldstyle servers are not supported)", found: opt });
    }
    Ok(Some((Greeting { handshake_flags: be::u16(buf, 16) }, GREETING_LEN)))
}

/// An option reply header; `length` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn parse(buf: &[u8]) -> Result<Option<(OptionReplyHeader, usize)>, WireError> {
        if buf.len() < OPTION_REPLY_HEADER_LEN {
            return Ok(None);
        }
        let magic = be::u64(buf, 0);
        if magic != REPLY_MAGIC {
            return Err(WireError::BadMagic { what: "option reply", found: magic });
        }
        let length = be::u32(buf, 16);
        if length > MAX_OPTION_DATA {
            return Err(WireError::MalformedReply { reason: "option reply longer than 64 KiB" });
        }
        Ok(Some((OptionReplyHeader { option: be::u32(buf, 8), reply_type: be::u32(buf, 12), length }, OPTION_REPLY_HEADER_LEN)))
    }

    pub fn is_error(&self) -> bool {
        self.reply_type & 0x8000_0000 != 0
    }
}

/// Size and transmission flags from an `INFO_EXPORT` reply's data.
pub fn parse_info_export(data: &[u8]) -> Result<Option<(u64, u16)>, WireError> {
    if data.len() < 2 || be::u16(data, 0) != INFO_EXPORT {
        return Ok(None);
    }
    if data.len() != 12 {
        return Err(WireError::MalformedReply { reason: "INFO_EXPORT data is not 12 bytes" });
    }
    Ok(Some((be::u64(data, 2), be::u16(data, 10))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{greeting, info_export};

    #[test]
    fn test_greeting_parses_what_server_sends() {
        let g = greeting();
        let (p, n) = parse_greeting(&g).unwrap().unwrap();
        assert_eq!(n, GREETING_LEN);
        assert_eq!(p.handshake_flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    }

    #[test]
    fn test_info_export_roundtrip() {
        let mut out = Vec::new();
        info_export(&mut out, OPT_GO, 1 << 30, TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH);
        let (h, n) = OptionReplyHeader::parse(&out).unwrap().unwrap();
        assert_eq!(h.reply_type, REP_INFO);
        let info = parse_info_export(&out[n..n + h.length as usize]).unwrap();
        assert_eq!(info, Some((1 << 30, TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH)));
    }
}
