//! The transmission phase: request headers, simple replies and structured
//! reply chunks.

use crate::consts::*;
use crate::limits::*;
use crate::{be, WireError};

/// A command type. Unknown numbers are kept so the server can answer EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Self {
        match v {
            CMD_READ => Command::Read,
            CMD_WRITE => Command::Write,
            CMD_DISC => Command::Disc,
            CMD_FLUSH => Command::Flush,
            CMD_TRIM => Command::Trim,
            CMD_CACHE => Command::Cache,
            CMD_WRITE_ZEROES => Command::WriteZeroes,
            CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

impl Command {
    pub fn code(self) -> u16 {
        match self {
            Command::Read => CMD_READ,
            Command::Write => CMD_WRITE,
            Command::Disc => CMD_DISC,
            Command::Flush => CMD_FLUSH,
            Command::Trim => CMD_TRIM,
            Command::Cache => CMD_CACHE,
            Command::WriteZeroes => CMD_WRITE_ZEROES,
            Command::BlockStatus => CMD_BLOCK_STATUS,
            Command::Unknown(v) => v,
        }
    }
}

/// A request header. For WRITE, `length` bytes of payload follow it; the
/// header decoder does not judge `length`: that is the validator's job,
/// because the answer depends on the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, WireError> {
        if buf.len() < REQUEST_LEN {
            return Ok(None);
        }
        let magic = be::u32(buf, 0);
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic { what: "request", found: magic as u64 });
        }
        Ok(Some((
            Request {
                flags: be::u16(buf, 4),
                command: Command::from(be::u16(buf, 6)),
                cookie: be::u64(buf, 8),
                offset: be::u64(buf, 16),
                length: be::u32(buf, 24),
            },
            REQUEST_LEN,
        )))
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.code().to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }
}

/// A simple reply header; a successful READ's data follows it.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A decoded simple reply header (the client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn parse(buf: &[u8]) -> Result<Option<(SimpleReply, usize)>, WireError> {
        if buf.len() < SIMPLE_REPLY_LEN {
            return Ok(None);
        }
        let magic = be::u32(buf, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(WireError::BadMagic { what: "simple reply", found: magic as u64 });
        }
        Ok(Some((SimpleReply { error: be::u32(buf, 4), cookie: be::u64(buf, 8) }, SIMPLE_REPLY_LEN)))
    }
}

/// A structured reply chunk header; `length` bytes of chunk data follow.
pub fn chunk_header(flags: u16, chunk_type: u16, cookie: u64, length: u32) -> [u8; CHUNK_HEADER_LEN] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// Header plus the u64 offset of an OFFSET_DATA chunk carrying `data_len`
/// bytes; the data itself follows (sent separately to avoid a copy).
pub fn offset_data_prefix(out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32, done: bool) {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    out.extend_from_slice(&chunk_header(flags, REPLY_TYPE_OFFSET_DATA, cookie, 8 + data_len));
    out.extend_from_slice(&offset.to_be_bytes());
}

/// An ERROR chunk (always the last chunk of its reply here).
pub fn error_chunk(out: &mut Vec<u8>, cookie: u64, error: u32, message: &str) {
    let msg = &message.as_bytes()[..message.len().min(u16::MAX as usize)];
    out.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + msg.len() as u32));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
}

/// A NONE chunk with DONE set: "success, nothing more".
pub fn none_chunk(out: &mut Vec<u8>, cookie: u64) {
    out.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0));
}

/// One extent of a BLOCK_STATUS reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    pub flags: u32,
}

/// A BLOCK_STATUS chunk (DONE set) for one metadata context.
pub fn block_status_chunk(out: &mut Vec<u8>, cookie: u64, context_id: u32, extents: &[Extent]) {
    let len = 4 + 8 * extents.len() as u32;
    out.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len));
    out.extend_from_slice(&context_id.to_be_bytes());
    for e in extents {
        out.extend_from_slice(&e.length.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_roundtrip_and_incomplete() {
        let r = Request { flags: CMD_FLAG_FUA, command: Command::Write, cookie: 7, offset: 4096, length: 512 };
        let b = r.encode();
        assert_eq!(Request::parse(&b[..27]).unwrap(), None);
        assert_eq!(Request::parse(&b).unwrap(), Some((r, REQUEST_LEN)));
        assert_eq!(r.payload_len(), 512);
    }

    #[test]
    fn test_request_bad_magic_is_invalid() {
        let mut b = Request { flags: 0, command: Command::Read, cookie: 1, offset: 0, length: 1 }.encode();
        b[3] = 0;
        assert!(matches!(Request::parse(&b), Err(WireError::BadMagic { .. })));
    }

    #[test]
    fn test_unknown_command_is_kept() {
        let b = Request { flags: 0, command: Command::Unknown(99), cookie: 1, offset: 0, length: 0 }.encode();
        assert_eq!(Request::parse(&b).unwrap().unwrap().0.command, Command::Unknown(99));
    }

    #[test]
    fn test_simple_reply_roundtrip() {
        let b = simple_reply(EIO, 0xdead);
        assert_eq!(SimpleReply::parse(&b).unwrap(), Some((SimpleReply { error: EIO, cookie: 0xdead }, 16)));
    }

    #[test]
    fn test_block_status_chunk_layout() {
        let mut out = Vec::new();
        block_status_chunk(&mut out, 5, 1, &[Extent { length: 4096, flags: STATE_HOLE | STATE_ZERO }]);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + 4 + 8);
        assert_eq!(&out[16..20], &12u32.to_be_bytes());
    }
}
