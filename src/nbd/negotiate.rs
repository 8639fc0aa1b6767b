//! Option haggling as a pure state machine: given a decoded option and the
//! server's exports ([`Exports`]: lookups in memory), produce the reply bytes and what the
//! shell must do next. The only step that needs I/O, opening the export for
//! GO / EXPORT_NAME, is handed back to the shell as [`Step::Open`].

use nbd_wire::consts::*;
use nbd_wire::handshake::{self, ClientOption, InfoRequest};
use nbd_wire::limits::MAX_PAYLOAD;

use crate::mac::Mac;
use crate::storage::registry::{AccessError, Registry, ResolveError, Target};

/// What negotiation asks of the server's exports: lookups in memory, no
/// I/O (the registry answers from its catalogue and its records).
pub trait Exports {
    /// What an export name serves.
    fn resolve(&self, name: &str) -> Result<Target, ResolveError>;
    /// Names and descriptions for NBD_OPT_LIST.
    fn list(&self) -> Vec<(String, String)>;
    /// Whether a connection from `peer` may open `mac`'s overlay.
    fn check_access(&self, mac: Mac, peer: std::net::IpAddr) -> Result<(), AccessError>;
}

impl Exports for Registry {
    fn resolve(&self, name: &str) -> Result<Target, ResolveError> {
        self.catalogue().resolve(name)
    }

    fn list(&self) -> Vec<(String, String)> {
        self.catalogue().list()
    }

    fn check_access(&self, mac: Mac, peer: std::net::IpAddr) -> Result<(), AccessError> {
        Registry::check_access(self, mac, peer)
    }
}

/// The one metadata context id we hand out.
pub const BASE_ALLOCATION_ID: u32 = 1;
/// Smallest request granularity we support: byte-granular.
pub const BLOCK_MIN: u32 = 1;
/// Preferred request size: the page size, which the cluster size divides.
pub const BLOCK_PREFERRED: u32 = 4096;

/// What the client agreed during the handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiation {
    /// The client's address, for the registry's access check.
    pub peer: Option<std::net::IpAddr>,
    pub no_zeroes: bool,
    pub structured: bool,
    /// Whether `base:allocation` was selected with SET_META_CONTEXT.
    pub base_allocation: bool,
}

/// What the shell does after an option.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes and read the next option.
    Reply(Vec<u8>),
    /// Send these bytes (possibly none) and close.
    Close(Vec<u8>),
    /// Open `target`, then call [`Negotiation::opened`] or [`Negotiation::open_failed`].
    Open(OpenRequest),
}

/// A GO or EXPORT_NAME (or INFO, which answers without entering transmission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub option: u32,
    pub name: String,
    pub target: Target,
    pub requests: Vec<InfoRequest>,
}

impl OpenRequest {
    /// INFO only describes the export: the shell need not open it.
    pub fn is_info(&self) -> bool {
        self.option == OPT_INFO
    }
}

/// Transmission flags for an export.
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE | TFLAG_CAN_MULTI_CONN;
    if read_only {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
    }
    if structured {
        f |= TFLAG_SEND_DF;
    }
    f
}

fn resolve_error_reply(out: &mut Vec<u8>, option: u32, e: &ResolveError) {
    let kind = match e {
        ResolveError::Unknown { .. } => REP_ERR_UNKNOWN,
        ResolveError::UnknownClient { .. } => REP_ERR_POLICY,
    };
    handshake::option_error(out, option, kind, &e.to_string());
}

/// Whether a metadata query selects `base:allocation`.
fn selects_base_allocation(query: &str) -> bool {
    query == META_BASE_ALLOCATION || query == "base:"
}

impl Negotiation {
    /// Decide the reply to one option. Pure: the registry lookups it makes are
    /// in memory.
    pub fn on_option(&mut self, opt: ClientOption, registry: &impl Exports) -> Step {
        let mut out = Vec::new();
        match opt {
            ClientOption::Abort => {
                handshake::option_reply(&mut out, OPT_ABORT, REP_ACK, &[]);
                Step::Close(out)
            }
            ClientOption::List => {
                for (name, description) in registry.list() {
                    handshake::rep_server(&mut out, &name, &description);
                }
                handshake::option_reply(&mut out, OPT_LIST, REP_ACK, &[]);
                Step::Reply(out)
            }
            ClientOption::StartTls => {
                handshake::option_error(&mut out, OPT_STARTTLS, REP_ERR_UNSUP, "TLS is not supported by this server");
                Step::Reply(out)
            }
            ClientOption::StructuredReply => {
                if self.structured {
                    handshake::option_error(&mut out, OPT_STRUCTURED_REPLY, REP_ERR_INVALID, "structured replies already negotiated");
                } else {
                    self.structured = true;
                    handshake::option_reply(&mut out, OPT_STRUCTURED_REPLY, REP_ACK, &[]);
                }
                Step::Reply(out)
            }
            ClientOption::ListMetaContext { export, queries } => {
                self.meta_context(OPT_LIST_META_CONTEXT, &export, &queries, registry, &mut out);
                Step::Reply(out)
            }
            ClientOption::SetMetaContext { export, queries } => {
                self.meta_context(OPT_SET_META_CONTEXT, &export, &queries, registry, &mut out);
                Step::Reply(out)
            }
            ClientOption::ExportName(name) => match registry.resolve(&name) {
                // EXPORT_NAME has no error reply: refusing means closing.
                Err(_) => Step::Close(Vec::new()),
                Ok(target) if self.access(&target, registry).is_err() => Step::Close(Vec::new()),
                Ok(target) => Step::Open(OpenRequest { option: OPT_EXPORT_NAME, name, target, requests: Vec::new() }),
            },
            ClientOption::Info { name, requests } => self.info_or_go(OPT_INFO, name, requests, registry),
            ClientOption::Go { name, requests } => self.info_or_go(OPT_GO, name, requests, registry),
            ClientOption::Unknown(option) => {
                handshake::option_error(&mut out, option, REP_ERR_UNSUP, "option not supported");
                Step::Reply(out)
            }
        }
    }

    /// Whether this connection may open `target` (client overlays may be
    /// bound to the address their client booted from).
    fn access(&self, target: &Target, registry: &impl Exports) -> Result<(), AccessError> {
        match (target, self.peer) {
            (Target::Client(mac), Some(peer)) => registry.check_access(*mac, peer),
            _ => Ok(()),
        }
    }

    fn info_or_go(&mut self, option: u32, name: String, requests: Vec<InfoRequest>, registry: &impl Exports) -> Step {
        match registry.resolve(&name) {
            Ok(target) => match self.access(&target, registry) {
                Ok(()) => Step::Open(OpenRequest { option, name, target, requests }),
                Err(e) => {
                    let mut out = Vec::new();
                    handshake::option_error(&mut out, option, REP_ERR_POLICY, &e.to_string());
                    Step::Reply(out)
                }
            },
            Err(e) => {
                let mut out = Vec::new();
                resolve_error_reply(&mut out, option, &e);
                Step::Reply(out)
            }
        }
    }

    fn meta_context(&mut self, option: u32, export: &str, queries: &[String], registry: &impl Exports, out: &mut Vec<u8>) {
        if !self.structured {
            handshake::option_error(out, option, REP_ERR_INVALID, "negotiate structured replies first");
            return;
        }
        if let Err(e) = registry.resolve(export) {
            resolve_error_reply(out, option, &e);
            return;
        }
        let selected =
            if option == OPT_LIST_META_CONTEXT && queries.is_empty() { true } else { queries.iter().any(|q| selects_base_allocation(q)) };
        if option == OPT_SET_META_CONTEXT {
            self.base_allocation = selected;
        }
        if selected {
            handshake::rep_meta_context(out, option, BASE_ALLOCATION_ID, META_BASE_ALLOCATION);
        }
        handshake::option_reply(out, option, REP_ACK, &[]);
    }

    /// The reply once the export of `req` is open (or, for INFO, described):
    /// INFO replies then ACK, or the EXPORT_NAME reply.
    pub fn opened(&self, req: &OpenRequest, size: u64, read_only: bool, description: &str) -> Vec<u8> {
        let flags = transmission_flags(read_only, self.structured);
        let mut out = Vec::new();
        if req.option == OPT_EXPORT_NAME {
            handshake::export_name_reply(&mut out, size, flags, self.no_zeroes);
            return out;
        }
        for r in &req.requests {
            match r {
                InfoRequest::Name => handshake::info_string(&mut out, req.option, INFO_NAME, &req.name),
                InfoRequest::Description if !description.is_empty() => {
                    handshake::info_string(&mut out, req.option, INFO_DESCRIPTION, description)
                }
                _ => {}
            }
        }
        // Block sizes always: clients that did not ask may still use them.
        handshake::info_block_size(&mut out, req.option, BLOCK_MIN, BLOCK_PREFERRED, MAX_PAYLOAD);
        handshake::info_export(&mut out, req.option, size, flags);
        handshake::option_reply(&mut out, req.option, REP_ACK, &[]);
        out
    }

    /// The reply when opening failed: EXPORT_NAME can only close.
    pub fn open_failed(&self, req: &OpenRequest, message: &str) -> Step {
        if req.option == OPT_EXPORT_NAME {
            return Step::Close(Vec::new());
        }
        let mut out = Vec::new();
        handshake::option_error(&mut out, req.option, REP_ERR_POLICY, message);
        Step::Reply(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exports from a table in memory: negotiation needs nothing else.
    struct Table {
        booted_from: std::net::IpAddr,
    }

    const MAC: &str = "52:54:00:00:00:0a";

    impl Exports for Table {
        fn resolve(&self, name: &str) -> Result<Target, ResolveError> {
            match name {
                "debian" => Ok(Target::Image(name.into())),
                MAC => Ok(Target::Client(MAC.parse().unwrap())),
                _ => Err(ResolveError::Unknown { name: name.into() }),
            }
        }

        fn list(&self) -> Vec<(String, String)> {
            vec![("debian".into(), "base".into())]
        }

        fn check_access(&self, mac: Mac, peer: std::net::IpAddr) -> Result<(), AccessError> {
            match peer == self.booted_from {
                true => Ok(()),
                false => Err(AccessError::BootedElsewhere { mac, booted_from: self.booted_from, peer }),
            }
        }
    }

    /// GO for a client's overlay opens it from the address it booted from,
    /// and gets the policy error, naming both addresses, from elsewhere;
    /// an unknown name gets its error reply; nothing here does I/O.
    #[test]
    fn test_go_follows_the_exports_access_check() {
        let table = Table { booted_from: "10.0.0.7".parse().unwrap() };
        let go = |peer: &str, name: &str| {
            let mut neg = Negotiation { peer: Some(peer.parse().unwrap()), ..Negotiation::default() };
            neg.on_option(ClientOption::Go { name: name.into(), requests: Vec::new() }, &table)
        };
        assert!(matches!(go("10.0.0.7", MAC), Step::Open(r) if r.target == Target::Client(MAC.parse().unwrap())));
        let Step::Reply(refused) = go("10.0.0.8", MAC) else { panic!("not a reply") };
        let text = String::from_utf8_lossy(&refused);
        assert!(text.contains("booted from 10.0.0.7; its overlay is not opened for 10.0.0.8"), "{text}");
        assert_eq!(u32::from_be_bytes(refused[12..16].try_into().unwrap()), REP_ERR_POLICY);
        let Step::Reply(unknown) = go("10.0.0.7", "ubuntu") else { panic!("not a reply") };
        assert_eq!(u32::from_be_bytes(unknown[12..16].try_into().unwrap()), REP_ERR_UNKNOWN);
    }
}
