//! Replays the fuzz seed corpus (and any crash artifacts saved there)
//! through the fuzz target's checks, on stable Rust, in every test run.

include!("../fuzz/check_nbd_decode.rs");
include!("../fuzz/check_partition_table.rs");
include!("../fuzz/check_dhcp_reply.rs");

use pxeroot_init::{dhcp, lease};

#[test]
fn test_fuzz_seed_corpus_passes_checks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/nbd_decode");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        check_nbd_decode(&data);
        // Every prefix too: "need more bytes" must never panic.
        for cut in 0..data.len() {
            check_nbd_decode(&data[..cut]);
        }
        n += 1;
    }
    assert!(n >= 10, "seed corpus went missing");
}

/// The partition table target's seeds pass its checks, whole and cut
/// short, and still hold what they were made to hold (so the corpus stays
/// meaningful): a GPT for each sector size, an MBR with logical partitions,
/// a looping EBR chain, a FAT boot sector, whole-disk filesystems.
#[test]
fn test_partition_table_seeds_pass_checks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/partition_table");
    let seed = |name: &str| std::fs::read(format!("{dir}/{name}")).expect("seed");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        check_partition_table(&data);
        for cut in (0..data.len()).step_by(97) {
            check_partition_table(&data[..cut]);
        }
        n += 1;
    }
    assert!(n >= 7, "seed corpus went missing");
    let numbers = |name: &str| -> Vec<(u32, &'static str)> {
        let d = seed(name);
        let parts = gpt::read(|buf: &mut [u8], off: u64| -> Result<(), ()> {
            read_zero_past_end(&d, buf, off);
            Ok(())
        });
        parts.unwrap().unwrap().unwrap_or_default().iter().map(|p| (p.number, p.table())).collect()
    };
    assert_eq!(numbers("gpt-512"), [(1, "GPT"), (2, "GPT")]);
    assert_eq!(numbers("gpt-4096"), [(1, "GPT")]);
    assert_eq!(numbers("mbr-logical"), [(1, "MBR"), (5, "MBR"), (6, "MBR")]);
    assert_eq!(numbers("mbr-loop").len(), gpt::mbr::MAX_EBRS as usize);
    assert!(numbers("fat-boot-sector").is_empty());
    assert_eq!(gpt::fsid::identify(&seed("btrfs-whole-disk")).map(|f| (f.kind, f.label)), Some(("btrfs", "btrfs".to_string())));
    assert_eq!(gpt::fsid::identify(&seed("ext4-whole-disk")).map(|f| f.label), Some("cloudimg-rootfs".to_string()));
    assert_eq!(gpt::fsid::identify(&seed("mbr-logical")[10 * 512..]).map(|f| (f.kind, f.label)), Some(("xfs", "xfsroot".to_string())));
}

/// The DHCP reply target's seeds (dnsmasq's OFFERs and ACKs from the OVMF
/// capture, a NAK made from one, ACKs with DNS servers, names and a search list) pass
/// its checks, whole and cut short, and the captured ACKs still carry the
/// lease times the keeper schedules by.
#[test]
fn test_dhcp_reply_seeds_pass_checks() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/dhcp_reply");
    let (mut n, mut acks) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        check_dhcp_reply(&data);
        for cut in 0..data.len() {
            check_dhcp_reply(&data[..cut]);
        }
        let mac: [u8; 6] = data[28..34].try_into().unwrap();
        let xid = u32::from_be_bytes(data[4..8].try_into().unwrap());
        let reply = dhcp::parse_reply(&data, xid, mac).expect("a seed parses");
        if path.ends_with("ack-with-dns-and-names") {
            // Four DNS servers and 0.0.0.0 sent, three kept; names with a
            // trailing NUL or dot, as some servers send them.
            assert_eq!(reply.dns.len(), dhcp::MAX_DNS_SERVERS);
            assert_eq!((reply.domain.as_deref(), reply.hostname.as_deref()), (Some("lab.example"), Some("lab-07")));
        } else if path.ends_with("ack-with-search-list") {
            // Option 119 in two pieces, with pointers (RFC 3396, 3397).
            assert_eq!(reply.search, ["lab.example", "corp.example", "eng.corp.example"]);
        } else if reply.message_type == dhcp::ACK {
            assert_eq!((reply.lease_secs, reply.renew_secs, reply.rebind_secs), (Some(43200), Some(21600), Some(37800)));
            acks += 1;
        }
        n += 1;
    }
    assert!(n >= 6 && acks >= 2, "seed corpus went missing: {n} seeds, {acks} ACKs");
}
