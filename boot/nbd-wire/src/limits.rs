//! Every limit on a length or count that comes from the wire.

/// Largest READ or WRITE payload we accept: the Linux kernel client sends
/// requests up to 32 MiB (and the NBD spec asks for at least 1 MiB).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Largest option data we read during the handshake. Export names are at most
/// [`MAX_NAME_LEN`]; SET_META_CONTEXT carries a few short queries. 64 KiB is
/// far above any honest client and small enough to buffer per connection.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// The spec bounds export names (and other strings) at 4096 bytes.
pub const MAX_NAME_LEN: u32 = 4096;
/// Information requests per INFO/GO: only four types exist; allow repeats.
pub const MAX_INFO_REQUESTS: u16 = 64;
/// Queries per LIST/SET_META_CONTEXT: we serve one context.
pub const MAX_META_QUERIES: u32 = 64;
/// Options one connection may send before it has to pick an export: stops a
/// client from haggling forever.
pub const MAX_OPTIONS_PER_HANDSHAKE: usize = 256;

/// Size of the server's initial greeting (NBDMAGIC, IHAVEOPT, u16 flags).
pub const GREETING_LEN: usize = 18;
/// Size of a client option header (IHAVEOPT, u32 option, u32 length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of an option reply header (magic, u32 option, u32 type, u32 length).
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Zero padding after an EXPORT_NAME reply when NO_ZEROES is not agreed.
pub const EXPORT_NAME_PADDING: usize = 124;
