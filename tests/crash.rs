//! kill -9 in the middle of a write stream, many times over one overlay:
//! after each kill, `qemu-img check` must accept the overlay (leaks allowed)
//! and every write acknowledged before the last completed FLUSH must be in it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nbd_wire::Command as Cmd;

const MAC: &str = "52:54:00:00:0c:01";
const STEM: &str = "52-54-00-00-0c-01";
const SIZE: usize = 128 << 20;
const KILLS: u64 = 25;
/// Writes land in unique slots so the expected content is unambiguous.
const SLOT: u64 = 16 << 10;
const QD: usize = 8;

/// What was durable: slot -> seed of the last flushed write into it.
type Ledger = BTreeMap<u64, u64>;
/// Every seed sent to each slot, in order (recorded before sending).
type Sent = HashMap<u64, Vec<u64>>;

const SLOTS: u64 = SIZE as u64 / SLOT - 1;

/// A slot's region: fixed per slot, so versions differ only in content.
fn region(slot: u64) -> (u64, usize) {
    (slot * SLOT + (slot % 7) * 512, 512 + (slot % 24) as usize * 512)
}

/// Write into slots round-robin (so later rounds overwrite allocated
/// clusters in place), QD writes in flight, FLUSH every 16 writes; record
/// in `durable` every write acknowledged before a completed flush.
fn writer(port: u16, next: Arc<AtomicU64>, sent: Arc<Mutex<Sent>>, durable: Arc<Mutex<Ledger>>, stop: Arc<AtomicBool>) {
    let Ok(mut c) = Client::connect(port, MAC) else { return };
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut pending: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut since_flush = 0;
    while !stop.load(Ordering::Relaxed) {
        while pending.len() < QD {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let slot = n % SLOTS;
            let seed = n * 7919 + 1;
            let (off, len) = region(slot);
            sent.lock().unwrap().entry(slot).or_default().push(seed);
            let Ok(cookie) = c.send(Cmd::Write, 0, off, len as u32, &pattern(seed, len)) else { return };
            pending.insert(cookie, (slot, seed));
        }
        let Ok((cookie, err, _)) = c.recv(0) else { return };
        assert_eq!(err, 0, "write failed");
        acked.extend(pending.remove(&cookie));
        since_flush += 1;
        if since_flush >= 16 {
            since_flush = 0;
            // Everything acked so far is covered by this flush.
            let covered = std::mem::take(&mut acked);
            let Ok(fc) = c.send(Cmd::Flush, 0, 0, 0, &[]) else { return };
            loop {
                let Ok((cookie, err, _)) = c.recv(0) else { return };
                if cookie == fc {
                    assert_eq!(err, 0, "flush failed");
                    durable.lock().unwrap().extend(covered);
                    break;
                }
                acked.extend(pending.remove(&cookie));
            }
        }
    }
}

#[test]
fn test_kill9_during_writes_leaves_checkable_overlay_with_flushed_data() {
    require("qemu-img");
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.img");
    make_raw_base(&base, SIZE, 11);
    let base_bytes = std::fs::read(&base).unwrap();
    let state = d.path().join("state");
    let overlay = state.join(format!("{STEM}.qcow2"));
    let durable = Arc::new(Mutex::new(Ledger::new()));
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(Mutex::new(Sent::new()));
    let mut leaked_rounds = 0;
    for round in 0..KILLS {
        let s = Server::adhoc(&base, &state, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let (port, dur, st, nx, se) = (s.port, durable.clone(), stop.clone(), next.clone(), sent.clone());
        let t = std::thread::spawn(move || writer(port, nx, se, dur, st));
        // Kill at a different point of the stream each round.
        std::thread::sleep(Duration::from_millis(60 + (round * 37) % 250));
        s.kill9();
        stop.store(true, Ordering::Relaxed);
        t.join().expect("writer thread");

        let out = Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&overlay).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        // 0: clean; 3: leaked clusters only. 2 would be corruption.
        match out.status.code() {
            Some(0) => {}
            Some(3) => leaked_rounds += 1,
            other => panic!("round {round}: qemu-img check exit {other:?}:\n{text}"),
        }
        assert!(!text.contains("ERROR"), "round {round}: {text}");
    }
    // Restart cleanly: leaks are reclaimed on open, and every durable write
    // from every round is there.
    let s = Server::adhoc(&base, &state, &[]);
    let mut c = Client::connect(s.port, MAC).unwrap();
    let ledger = durable.lock().unwrap().clone();
    assert!(ledger.len() > 1000, "too few durable writes to mean anything: {}", ledger.len());
    let sent = sent.lock().unwrap().clone();
    for (&slot, &seed) in &ledger {
        let (off, len) = region(slot);
        let (e, data) = c.read(off, len as u32);
        assert_eq!(e, 0);
        // Each sector holds the flushed version or one sent after it (an
        // unflushed write may have landed, even torn at sector granularity).
        let history = &sent[&slot];
        let from = history.iter().position(|&x| x == seed).expect("durable seed was sent");
        let candidates: Vec<Vec<u8>> = history[from..].iter().map(|&x| pattern(x, len)).collect();
        for (i, sector) in data.chunks(512).enumerate() {
            let ok = candidates.iter().any(|cand| &cand[i * 512..i * 512 + sector.len()] == sector);
            assert!(ok, "slot {slot} sector {i}: a flushed write is missing after kill -9");
        }
    }
    // The last slot is never written: it still reads as the base.
    let last = SIZE as u64 - SLOT;
    let (_, data) = c.read(last, SLOT as u32);
    assert_eq!(&data[..], &base_bytes[last as usize..]);
    c.disconnect();
    assert_eq!(s.stop(), 0);
    let out = stdout(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&overlay));
    assert!(out.contains("No errors were found") && !out.contains("leaked"), "after a clean stop: {out}");
    eprintln!("{KILLS} kills, {leaked_rounds} left leaks, {} writes sent, {} slots verified", next.load(Ordering::Relaxed), ledger.len());
}
