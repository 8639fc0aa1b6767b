//! Limits of the boot protocols that the server and pxeroot-init share:
//! what DHCP options, the kernel command line and DNS names may carry, each
//! a named constant, and the name checks both sides apply before a name
//! from the wire reaches a configuration file. std only, no I/O.
#![forbid(unsafe_code)]

/// The largest partition number the root may be on (`partition` in an
/// image's config, `pxeroot.partition=` on the kernel command line, which
/// the server writes and pxeroot-init reads): GPT's usual table holds 128
/// entries.
pub const MAX_PARTITION: u32 = 128;

/// The smallest MTU an IPv4 host must accept (RFC 791), and so the smallest
/// DHCP option 26 may carry (RFC 2132, 5.1): the least `mtu` in the
/// server's config, and what pxeroot-init takes from option 26 or
/// `pxeroot.mtu=` (a smaller one is ignored or refused).
pub const MIN_MTU: u16 = 68;
/// The longest domain name DHCP option 15 may carry (RFC 1035, 2.3.4:
/// 255 octets on the wire, 253 characters in text), and its longest label.
pub const MAX_DOMAIN_LEN: usize = 253;
pub const MAX_LABEL_LEN: usize = 63;
/// The longest hostname the Linux kernel keeps (`__NEW_UTS_LEN`,
/// HOST_NAME_MAX): the longest per-client `hostname` in the server's config
/// and the longest option 12 pxeroot-init takes.
pub const MAX_HOSTNAME_LEN: usize = 64;
/// The most search domains (DHCP option 119, RFC 3397) the server's config
/// takes and pxeroot-init keeps: what a resolv.conf held for decades
/// (glibc's MAXDNSRCH before 2.26; musl reads one line of 256 bytes).
pub const MAX_SEARCH_DOMAINS: usize = 6;

/// A plain DNS name (letters, digits, `-`, `_`, labels joined by single
/// dots) within [`MAX_DOMAIN_LEN`] and [`MAX_LABEL_LEN`]: what the server's
/// config and pxeroot-init accept as a domain, which ends up in the
/// root's configuration files (no space, newline or bracket can).
pub fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DOMAIN_LEN
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= MAX_LABEL_LEN && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A plain DNS name ([`is_domain_name`]) the kernel can keep as its
/// hostname: at most [`MAX_HOSTNAME_LEN`] characters.
pub fn is_host_name(name: &str) -> bool {
    name.len() <= MAX_HOSTNAME_LEN && is_domain_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_dns_names_within_their_limits() {
        assert!(is_domain_name("lab.example") && is_domain_name("a_b-c.d1"));
        for bad in ["", ".", "lab..example", "lab.example.", "lab example", "lab\nx", "[lab]", "é.example"] {
            assert!(!is_domain_name(bad), "{bad:?}");
        }
        assert!(is_domain_name(&"a".repeat(MAX_LABEL_LEN)) && !is_domain_name(&"a".repeat(MAX_LABEL_LEN + 1)));
        let long = vec!["a".repeat(MAX_LABEL_LEN); 4].join(".");
        assert!(is_domain_name(&long[..MAX_DOMAIN_LEN]) && !is_domain_name(&long[..MAX_DOMAIN_LEN + 1]));
        let host = format!("{}.{}", "h".repeat(31), "h".repeat(MAX_LABEL_LEN));
        assert!(is_host_name(&host[..MAX_HOSTNAME_LEN]) && !is_host_name(&host[..MAX_HOSTNAME_LEN + 1]));
        assert!(!is_host_name("lab 07"));
    }
}
