//! The DHCP fixtures (tests/fixtures/dhcp/*.pcap, captured from real
//! firmware): read by the DHCP decision unit tests (src/dhcp/decide.rs
//! includes this file) and by the namespace tests.

/// UDP payloads sent to the DHCP server ports (67, and 4011 for PXE) in a
/// classic pcap file of Ethernet frames, with their destination port:
/// 24-byte file header, then per record 16 bytes and the frame.
pub fn dhcp_payloads(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let incl = u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]) as usize;
        let frame = &bytes[at + 16..(at + 16 + incl).min(bytes.len())];
        at += 16 + incl;
        // IPv4 carrying UDP.
        if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let udp = 14 + (frame[14] & 0x0f) as usize * 4;
        let Some(header) = frame.get(udp..udp + 8) else { continue };
        let dport = u16::from_be_bytes([header[2], header[3]]);
        if dport == 67 || dport == 4011 {
            out.push((dport, frame[udp + 8..].to_vec()));
        }
    }
    out
}

/// The payloads of fixture `name`.
pub fn fixture_payloads(name: &str) -> Vec<(u16, Vec<u8>)> {
    dhcp_payloads(&std::fs::read(format!("{}/tests/fixtures/dhcp/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap())
}
