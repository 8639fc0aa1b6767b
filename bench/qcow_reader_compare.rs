//! Measures why pxeroot parses qcow2 itself instead of using the design
//! card's `qcow` crate: random 4 KiB reads from one qcow2 base through
//! (a) `qcow` 1.2's `Reader` (one `&mut` cursor per image: a second thread
//!     would need its own reader or a lock around this one),
//! (b) pxeroot's `BaseImage::read_at` on one thread,
//! (c) `BaseImage::read_at` shared by two threads.
//!
//!   cargo run --release --example qcow_reader_compare -- IMAGE.qcow2 [READS]

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Instant;

use pxeroot::storage::BaseImage;

fn offsets(n: usize, size: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (size / 4096)) * 4096
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or_else(|| anyhow::anyhow!("usage: qcow_reader_compare IMAGE.qcow2 [READS]"))?;
    let reads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(100_000);

    let base = Arc::new(BaseImage::open(std::path::Path::new(&path))?);
    let size = base.size();
    let offs = offsets(reads, size, 42);
    let mut buf = vec![0u8; 4096];

    // (a) the qcow crate
    let qcow = qcow::open(&path)?.unwrap_qcow2();
    let mut file = BufReader::new(File::open(&path)?);
    let mut reader = qcow.reader(&mut file);
    let t = Instant::now();
    let mut check_a = 0u64;
    for &o in &offs {
        reader.seek(SeekFrom::Start(o))?;
        reader.read_exact(&mut buf)?;
        check_a = check_a.wrapping_add(buf[17] as u64);
    }
    let a = reads as f64 / t.elapsed().as_secs_f64();

    // (b) pxeroot, one thread
    let t = Instant::now();
    let mut check_b = 0u64;
    for &o in &offs {
        base.read_at(&mut buf, o)?;
        check_b = check_b.wrapping_add(buf[17] as u64);
    }
    let b = reads as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(check_a == check_b, "the two readers disagree about the image's content");

    // (c) pxeroot, two threads on the same BaseImage
    let t = Instant::now();
    let threads: Vec<_> = [offs[..reads / 2].to_vec(), offs[reads / 2..].to_vec()]
        .into_iter()
        .map(|part| {
            let base = base.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut buf = vec![0u8; 4096];
                for o in part {
                    base.read_at(&mut buf, o)?;
                }
                Ok(())
            })
        })
        .collect();
    for th in threads {
        th.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    }
    let c = reads as f64 / t.elapsed().as_secs_f64();

    println!("random 4 KiB reads from {path} ({reads} reads, page-cached)");
    println!("  qcow crate Reader, 1 cursor     {a:>10.0} reads/s");
    println!("  pxeroot BaseImage, 1 thread     {b:>10.0} reads/s  ({:.1}x)", b / a);
    println!("  pxeroot BaseImage, 2 threads    {c:>10.0} reads/s  ({:.1}x)", c / a);
    Ok(())
}
