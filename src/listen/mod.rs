//! What a person is told when a service cannot open its listening socket:
//! the reason in words, and the fix, for every service alike; and how
//! every service admits, tracks and drains its work ([`admission`]).

pub mod admission;

pub use admission::{Admission, DRAIN_TIMEOUT};

use std::io::ErrorKind;

/// A listening socket that could not be opened: the service, where, why,
/// and the fix.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {service} on {addr}: {error}; {fix}")]
pub struct BindError {
    pub service: &'static str,
    pub addr: String,
    pub error: std::io::Error,
    pub fix: String,
}

impl BindError {
    /// `elsewhere`: how to move or turn off the service in the config.
    pub fn new(service: &'static str, addr: impl std::fmt::Display, port: u16, error: std::io::Error, elsewhere: &str) -> BindError {
        let fix = bind_fix(&error, port, elsewhere);
        BindError { service, addr: addr.to_string(), error, fix }
    }
}

/// The fix for a failed bind on `port`; `elsewhere` says how to move or
/// turn off that service in the config (its keys).
fn bind_fix(error: &std::io::Error, port: u16, elsewhere: &str) -> String {
    match error.kind() {
        ErrorKind::AddrInUse => {
            format!("another program holds port {port} (`ss -tulpn 'sport = :{port}'` names it): stop it, or {elsewhere}")
        }
        ErrorKind::PermissionDenied => format!(
            "ports below 1024 need root or CAP_NET_BIND_SERVICE (`setcap cap_net_bind_service,cap_net_raw+ep` on the binary), or {elsewhere}"
        ),
        ErrorKind::AddrNotAvailable => format!("no interface of this host has that address: use one it has, or 0.0.0.0, or {elsewhere}"),
        _ => elsewhere.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fixes_name_the_port_and_the_way_out() {
        let in_use = std::io::Error::from(ErrorKind::AddrInUse);
        let fix = bind_fix(&in_use, 69, "set tftp.listen or tftp.enabled = false");
        assert!(fix.contains("port 69") && fix.contains("sport = :69") && fix.ends_with("tftp.enabled = false"), "{fix}");
        let denied = std::io::Error::from(ErrorKind::PermissionDenied);
        assert!(bind_fix(&denied, 80, "x").contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(bind_fix(&std::io::Error::other("odd"), 80, "set http.listen"), "set http.listen");
    }
}
