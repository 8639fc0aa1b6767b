// Shared by the fuzz target and tests/fuzz_seeds.rs (included, not a
// module). Needs pxeroot-init's library's `dhcp` and `lease` modules in
// scope at the including crate's root.

/// pxeroot-init's DHCP client reads replies off the wire as PID 1 (where a
/// panic is a kernel panic) and in `@pxeroot-dhcp`. For any bytes: nothing
/// panics; a reply is taken only for its own xid; its netmask gives a
/// prefix of at most 32 and its MTU is one IPv4 allows; its DNS servers are
/// at most a resolver's three (NTP servers at most four), its domain, search domains (six at most, no repeats) and hostname plain DNS names
/// (they are written into the root's configuration files), the hostname
/// one the kernel keeps; answering a held lease with it never panics, and
/// a lease it extends has T1 <= T2 <= its length and a schedule that moves
/// forward (no busy loop in the keeper).
pub fn check_dhcp_reply(data: &[u8]) {
    // The xid and MAC the packet itself names, so the parser runs through.
    let xid = data.get(4..8).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let mut mac = [0u8; 6];
    if let Some(m) = data.get(28..34) {
        mac.copy_from_slice(m);
    }
    let Some(reply) = dhcp::parse_reply(data, xid, mac) else { return };
    assert!(dhcp::parse_reply(data, xid.wrapping_add(1), mac).is_none(), "another exchange's reply was taken");
    assert!(reply.prefix <= 32, "prefix {}", reply.prefix);
    assert!(reply.mtu.is_none_or(|m| m >= dhcp::MIN_MTU), "MTU {:?}", reply.mtu);
    assert!(reply.dns.len() <= dhcp::MAX_DNS_SERVERS && reply.ntp.len() <= dhcp::MAX_NTP_SERVERS, "{:?} {:?}", reply.dns, reply.ntp);
    assert!(reply.search.len() <= dhcp::MAX_SEARCH_DOMAINS, "{:?}", reply.search);
    assert!(reply.search.iter().enumerate().all(|(i, n)| !reply.search[..i].contains(n)), "{:?}", reply.search);
    for name in reply.domain.iter().chain(&reply.hostname).chain(&reply.search) {
        assert!(boot_limits::is_domain_name(name) && !name.contains(['\n', ' ', '[', '=']), "{name:?}");
    }
    assert!(reply.hostname.as_ref().is_none_or(|h| boot_limits::is_host_name(h)), "{:?}", reply.hostname);
    let Some(held) = lease::Held::new(reply.address, reply.server_id, 100, 3600, None, None) else {
        panic!("a one-hour lease is one to keep")
    };
    if let Ok(Some(kept)) = lease::answered(&held, &reply, 200) {
        assert!(kept.t1 <= kept.t2 && kept.t2 <= kept.secs, "{kept:?}");
        let (first, _) = lease::next(&kept, None);
        let (again, _) = lease::next(&kept, Some(first));
        assert!(first >= kept.granted && again > first, "{kept:?}: {first} then {again}");
    }
}
