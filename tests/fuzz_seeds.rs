//! Replays the fuzz seed corpus (and any crash artifacts saved there)
//! through the fuzz target's checks, on stable Rust, in every test run.

include!("../fuzz/check_nbd_decode.rs");

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
