//! Sans-IO codec for the NBD protocol (fixed newstyle handshake, simple and
//! structured replies), shared by the pxeroot server and by pxeroot-init.
//!
//! Nothing here touches a socket, a file or a clock: decoders take byte
//! slices and say either "here is a value and how many bytes it used",
//! "need more bytes" (`Ok(None)`), or "invalid" (`Err`). Encoders append to a
//! `Vec<u8>`. Every length that comes from the wire is checked against a named
//! limit in [`limits`] before anything is allocated from it.
//!
//! The constants are those of the NBD protocol document (`doc/proto.md` in
//! the NetworkBlockDevice/nbd repository); all integers are big-endian.
#![forbid(unsafe_code)]

pub mod client;
pub mod consts;
pub mod handshake;
pub mod limits;
pub mod transmission;

pub use handshake::{ClientOption, InfoRequest, OptionHeader};
pub use transmission::{Command, Request};

/// Why bytes from the peer could not be decoded. The connection that sent them
/// cannot be trusted to stay in sync afterwards unless the variant says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// A magic number was not the one the protocol puts at this place.
    BadMagic { what: &'static str, found: u64 },
    /// The client set handshake flag bits we do not know (the spec says: drop).
    UnknownClientFlags { flags: u32 },
    /// An option announced more data than [`limits::MAX_OPTION_DATA`].
    OptionTooLarge { option: u32, length: u32 },
    /// An option's data does not have the layout the protocol gives it.
    MalformedOption { option: u32, reason: &'static str },
    /// A reply from the server does not have the layout the protocol gives it.
    MalformedReply { reason: &'static str },
}

// `Display` and `Error` are written out rather than derived so this crate
// stays dependency-free: pxeroot-init links it statically.
impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::BadMagic { what, found } => {
                write!(f, "bad {what} magic 0x{found:x}")
            }
            WireError::UnknownClientFlags { flags } => {
                write!(f, "client sent unknown handshake flags 0x{flags:x}")
            }
            WireError::OptionTooLarge { option, length } => {
                write!(f, "option {option} announces {length} bytes of data, more than the {} allowed", limits::MAX_OPTION_DATA)
            }
            WireError::MalformedOption { option, reason } => {
                write!(f, "malformed option {option}: {reason}")
            }
            WireError::MalformedReply { reason } => write!(f, "malformed reply: {reason}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Big-endian readers over a slice whose length the caller has checked.
pub(crate) mod be {
    pub fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    pub fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    pub fn u64(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(a)
    }
}
