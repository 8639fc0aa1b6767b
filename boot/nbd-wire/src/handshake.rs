//! The fixed-newstyle handshake, server side: the greeting, the client's
//! flags, option requests (decoded whole, data bounded), and option replies.

use crate::consts::*;
use crate::limits::*;
use crate::{be, WireError};

/// The server's first 18 bytes: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// What the client answered to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Decode the client's u32 flags. Unknown bits are an error: the spec says
/// the server must then drop the connection.
pub fn parse_client_flags(buf: &[u8]) -> Result<Option<(ClientFlags, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let flags = be::u32(buf, 0);
    if flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(WireError::UnknownClientFlags { flags });
    }
    Ok(Some((ClientFlags { fixed_newstyle: flags & CLIENT_FLAG_FIXED_NEWSTYLE != 0, no_zeroes: flags & CLIENT_FLAG_NO_ZEROES != 0 }, 4)))
}

/// The 16-byte header in front of every option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    /// Decode an option header; its data length is checked against
    /// [`MAX_OPTION_DATA`] so the caller may allocate `length` bytes.
    pub fn parse(buf: &[u8]) -> Result<Option<(OptionHeader, usize)>, WireError> {
        if buf.len() < OPTION_HEADER_LEN {
            return Ok(None);
        }
        let magic = be::u64(buf, 0);
        if magic != IHAVEOPT {
            return Err(WireError::BadMagic { what: "option", found: magic });
        }
        let option = be::u32(buf, 8);
        let length = be::u32(buf, 12);
        if length > MAX_OPTION_DATA {
            return Err(WireError::OptionTooLarge { option, length });
        }
        Ok(Some((OptionHeader { option, length }, OPTION_HEADER_LEN)))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// One information request inside INFO or GO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoRequest {
    Export,
    Name,
    Description,
    BlockSize,
    /// Unknown types are ignored, as the spec asks.
    Other(u16),
}

impl From<u16> for InfoRequest {
    fn from(v: u16) -> Self {
        match v {
            INFO_EXPORT => InfoRequest::Export,
            INFO_NAME => InfoRequest::Name,
            INFO_DESCRIPTION => InfoRequest::Description,
            INFO_BLOCK_SIZE => InfoRequest::BlockSize,
            other => InfoRequest::Other(other),
        }
    }
}

impl InfoRequest {
    pub fn code(self) -> u16 {
        match self {
            InfoRequest::Export => INFO_EXPORT,
            InfoRequest::Name => INFO_NAME,
            InfoRequest::Description => INFO_DESCRIPTION,
            InfoRequest::BlockSize => INFO_BLOCK_SIZE,
            InfoRequest::Other(v) => v,
        }
    }
}

/// A client option decoded from its header and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info {
        name: String,
        requests: Vec<InfoRequest>,
    },
    Go {
        name: String,
        requests: Vec<InfoRequest>,
    },
    StructuredReply,
    ListMetaContext {
        export: String,
        queries: Vec<String>,
    },
    SetMetaContext {
        export: String,
        queries: Vec<String>,
    },
    /// An option number we do not implement: answer ERR_UNSUP and go on.
    Unknown(u32),
}

/// Cursor over option data that turns short reads into `MalformedOption`.
struct Fields<'a> {
    option: u32,
    data: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(WireError::MalformedOption { option: self.option, reason }),
        }
    }
    fn u16(&mut self, reason: &'static str) -> Result<u16, WireError> {
        Ok(be::u16(self.take(2, reason)?, 0))
    }
    fn u32(&mut self, reason: &'static str) -> Result<u32, WireError> {
        Ok(be::u32(self.take(4, reason)?, 0))
    }
    fn string(&mut self, len: u32, reason: &'static str) -> Result<String, WireError> {
        if len > MAX_NAME_LEN {
            return Err(WireError::MalformedOption { option: self.option, reason: "string longer than 4096 bytes" });
        }
        let bytes = self.take(len as usize, reason)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::MalformedOption { option: self.option, reason: "string is not UTF-8" })
    }
    fn finish(&self) -> Result<(), WireError> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err(WireError::MalformedOption { option: self.option, reason: "trailing bytes after option data" })
        }
    }
}

impl ClientOption {
    /// Decode an option's data (whose length the header already bounded).
    /// A malformed option is answered with ERR_INVALID; the session goes on.
    pub fn parse(option: u32, data: &[u8]) -> Result<ClientOption, WireError> {
        let mut f = Fields { option, data, at: 0 };
        let parsed = match option {
            OPT_EXPORT_NAME => {
                let name = f.string(data.len() as u32, "export name")?;
                ClientOption::ExportName(name)
            }
            OPT_ABORT => ClientOption::Abort,
            OPT_LIST => {
                if !data.is_empty() {
                    return Err(WireError::MalformedOption { option, reason: "LIST carries no data" });
                }
                ClientOption::List
            }
            OPT_STARTTLS => ClientOption::StartTls,
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return Err(WireError::MalformedOption { option, reason: "STRUCTURED_REPLY carries no data" });
                }
                ClientOption::StructuredReply
            }
            OPT_INFO | OPT_GO => {
                let len = f.u32("export name length")?;
                let name = f.string(len, "export name")?;
                let count = f.u16("information request count")?;
                if count > MAX_INFO_REQUESTS {
                    return Err(WireError::MalformedOption { option, reason: "too many information requests" });
                }
                let mut requests = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    requests.push(InfoRequest::from(f.u16("information request")?));
                }
                if option == OPT_INFO {
                    ClientOption::Info { name, requests }
                } else {
                    ClientOption::Go { name, requests }
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let len = f.u32("export name length")?;
                let export = f.string(len, "export name")?;
                let count = f.u32("query count")?;
                if count > MAX_META_QUERIES {
                    return Err(WireError::MalformedOption { option, reason: "too many metadata queries" });
                }
                let mut queries = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let qlen = f.u32("query length")?;
                    queries.push(f.string(qlen, "query")?);
                }
                if option == OPT_LIST_META_CONTEXT {
                    ClientOption::ListMetaContext { export, queries }
                } else {
                    ClientOption::SetMetaContext { export, queries }
                }
            }
            other => return Ok(ClientOption::Unknown(other)),
        };
        f.finish()?;
        Ok(parsed)
    }

    /// Encode this option with its header (the client side, and tests).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut data = Vec::new();
        let option = match self {
            ClientOption::ExportName(n) => {
                data.extend_from_slice(n.as_bytes());
                OPT_EXPORT_NAME
            }
            ClientOption::Abort => OPT_ABORT,
            ClientOption::List => OPT_LIST,
            ClientOption::StartTls => OPT_STARTTLS,
            ClientOption::StructuredReply => OPT_STRUCTURED_REPLY,
            ClientOption::Info { name, requests } | ClientOption::Go { name, requests } => {
                data.extend_from_slice(&(name.len() as u32).to_be_bytes());
                data.extend_from_slice(name.as_bytes());
                data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
                for r in requests {
                    data.extend_from_slice(&r.code().to_be_bytes());
                }
                if matches!(self, ClientOption::Info { .. }) {
                    OPT_INFO
                } else {
                    OPT_GO
                }
            }
            ClientOption::ListMetaContext { export, queries } | ClientOption::SetMetaContext { export, queries } => {
                data.extend_from_slice(&(export.len() as u32).to_be_bytes());
                data.extend_from_slice(export.as_bytes());
                data.extend_from_slice(&(queries.len() as u32).to_be_bytes());
                for q in queries {
                    data.extend_from_slice(&(q.len() as u32).to_be_bytes());
                    data.extend_from_slice(q.as_bytes());
                }
                if matches!(self, ClientOption::ListMetaContext { .. }) {
                    OPT_LIST_META_CONTEXT
                } else {
                    OPT_SET_META_CONTEXT
                }
            }
            ClientOption::Unknown(o) => *o,
        };
        OptionHeader { option, length: data.len() as u32 }.encode(out);
        out.extend_from_slice(&data);
    }
}

/// Append an option reply: magic, option, reply type, length, data.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// An error reply with a human-readable UTF-8 message.
pub fn option_error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    debug_assert!(reply_type & 0x8000_0000 != 0);
    option_reply(out, option, reply_type, message.as_bytes());
}

/// `REP_SERVER` for LIST: u32 name length, name, then an optional description.
pub fn rep_server(out: &mut Vec<u8>, name: &str, description: &str) {
    let mut d = Vec::with_capacity(4 + name.len() + description.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(description.as_bytes());
    option_reply(out, OPT_LIST, REP_SERVER, &d);
}

/// `INFO_EXPORT`: size and transmission flags (12 bytes of data).
pub fn info_export(out: &mut Vec<u8>, option: u32, size: u64, flags: u16) {
    let mut d = [0u8; 12];
    d[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    d[2..10].copy_from_slice(&size.to_be_bytes());
    d[10..12].copy_from_slice(&flags.to_be_bytes());
    option_reply(out, option, REP_INFO, &d);
}

/// `INFO_BLOCK_SIZE`: minimum, preferred, maximum payload (14 bytes).
pub fn info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    let mut d = [0u8; 14];
    d[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d[2..6].copy_from_slice(&min.to_be_bytes());
    d[6..10].copy_from_slice(&preferred.to_be_bytes());
    d[10..14].copy_from_slice(&max.to_be_bytes());
    option_reply(out, option, REP_INFO, &d);
}

/// `INFO_NAME` or `INFO_DESCRIPTION`: u16 type then the string.
pub fn info_string(out: &mut Vec<u8>, option: u32, info: u16, s: &str) {
    let mut d = Vec::with_capacity(2 + s.len());
    d.extend_from_slice(&info.to_be_bytes());
    d.extend_from_slice(s.as_bytes());
    option_reply(out, option, REP_INFO, &d);
}

/// `REP_META_CONTEXT`: u32 context id then its name.
pub fn rep_meta_context(out: &mut Vec<u8>, option: u32, id: u32, name: &str) {
    let mut d = Vec::with_capacity(4 + name.len());
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    option_reply(out, option, REP_META_CONTEXT, &d);
}

/// The reply to a successful EXPORT_NAME: size, flags, and 124 zero bytes
/// unless NO_ZEROES was agreed.
pub fn export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(o: ClientOption) {
        let mut buf = Vec::new();
        o.encode(&mut buf);
        let (h, used) = OptionHeader::parse(&buf).unwrap().unwrap();
        assert_eq!(used, OPTION_HEADER_LEN);
        assert_eq!(h.length as usize, buf.len() - used);
        assert_eq!(ClientOption::parse(h.option, &buf[used..]).unwrap(), o);
    }

    #[test]
    fn test_option_roundtrip_every_kind() {
        roundtrip(ClientOption::ExportName("52:54:00:12:34:56".into()));
        roundtrip(ClientOption::Abort);
        roundtrip(ClientOption::List);
        roundtrip(ClientOption::StructuredReply);
        roundtrip(ClientOption::Go { name: "base".into(), requests: vec![InfoRequest::BlockSize, InfoRequest::Other(9)] });
        roundtrip(ClientOption::Info { name: "".into(), requests: vec![] });
        roundtrip(ClientOption::SetMetaContext { export: "x".into(), queries: vec!["base:allocation".into()] });
        roundtrip(ClientOption::ListMetaContext { export: "x".into(), queries: vec![] });
        roundtrip(ClientOption::Unknown(42));
    }

    #[test]
    fn test_option_header_incomplete_then_invalid() {
        let mut buf = Vec::new();
        ClientOption::List.encode(&mut buf);
        assert_eq!(OptionHeader::parse(&buf[..15]).unwrap(), None);
        buf[0] ^= 1;
        assert!(matches!(OptionHeader::parse(&buf), Err(WireError::BadMagic { .. })));
    }

    #[test]
    fn test_option_header_oversized_is_refused() {
        let mut buf = Vec::new();
        OptionHeader { option: OPT_GO, length: MAX_OPTION_DATA + 1 }.encode(&mut buf);
        assert!(matches!(OptionHeader::parse(&buf), Err(WireError::OptionTooLarge { .. })));
    }

    #[test]
    fn test_go_with_lying_name_length_is_malformed() {
        let mut d = Vec::new();
        d.extend_from_slice(&100u32.to_be_bytes());
        d.extend_from_slice(b"abc");
        assert!(matches!(ClientOption::parse(OPT_GO, &d), Err(WireError::MalformedOption { .. })));
        let mut d = Vec::new();
        d.extend_from_slice(&0u32.to_be_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        d.push(7);
        assert!(matches!(ClientOption::parse(OPT_GO, &d), Err(WireError::MalformedOption { .. })));
    }

    #[test]
    fn test_client_flags_unknown_bits_rejected() {
        assert!(parse_client_flags(&[0, 0, 0, 3]).unwrap().is_some());
        assert!(parse_client_flags(&[0, 0, 0]).unwrap().is_none());
        assert!(parse_client_flags(&[0, 0, 0, 4]).is_err());
    }

    #[test]
    fn test_greeting_layout() {
        let g = greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }
}
