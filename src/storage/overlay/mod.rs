//! The qcow2 overlay engine: one client's copy-on-write layer over a base.
//!
//! Design notes
//! ------------
//! * The file is a standard qcow2 v3 image (64 KiB clusters, 16-bit
//!   refcounts) whose backing file is the base, with the backing format
//!   extension written, so every qemu-img command works on it.
//! * All metadata (L1, every L2 table, every refcount block) lives in memory
//!   behind one small mutex that is held only to look up or change tables,
//!   never across data I/O. Data moves with `pread`/`pwrite` on the file, so
//!   requests run concurrently.
//! * A write into a cluster that is not yet a plain data cluster takes the
//!   slow path: under the lock it reserves a host cluster at the end of the
//!   file (or reuses a preallocated zero cluster) and marks the guest cluster
//!   "in flight"; without the lock it builds the whole cluster (base data or
//!   zeros, plus the new bytes) and writes it; then, under the lock, it points
//!   the L2 entry at it. A second writer into an in-flight cluster waits for
//!   the first and then writes in place: one cluster, never two copies.
//! * Metadata reaches the file only at FLUSH (or FUA), in an order that makes
//!   every prefix of it consistent: refcount blocks (and with them all data)
//!   are made durable first, then refcount table entries, then L2 tables,
//!   then the L1 table, with an `fdatasync` between each step that has work.
//!   A crash at any moment (a kill -9 or a power cut) leaves the image as of
//!   the last completed flush plus, at worst, clusters whose refcount is 1
//!   and that nothing references: leaks, which `open` reclaims and logs.
//!   Nothing ever references a cluster whose refcount is 0 on disk.
//! * Freed clusters are not reused (only a failed reservation is released):
//!   allocation is a bump of `next_free`, which keeps the crash argument
//!   above simple. Zeroing a data cluster keeps its host cluster (the L2
//!   "zero" flag with an offset), so a later write reuses it; TRIM also
//!   punches a hole there, giving the disk blocks back.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::base::BaseImage;
use super::mapped::MappedImage;
use super::qcow2::{self, ClusterMap, Compression, Header, OverlayLayout, OVERLAY_CLUSTER_BITS, REFCOUNTS_PER_BLOCK};
use super::{sys, Extent, Result, StorageError};

mod flush;
mod open;
mod write;

const CLUSTER: u64 = 1 << OVERLAY_CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;

/// An open overlay. Shared (through `Arc`) by every connection of its client.
#[derive(Debug)]
pub struct Overlay {
    path: PathBuf,
    file: File,
    base: Arc<BaseImage>,
    size: u64,
    l1_offset: u64,
    refcount_table_offset: u64,
    /// Clusters the refcount table can describe: the file's size limit.
    max_clusters: u64,
    meta: Mutex<Meta>,
    /// Signalled whenever an in-flight cluster settles.
    settled: Condvar,
    /// Serialises flushes (each flush writes metadata in its fixed order).
    flushing: Mutex<()>,
    /// Set when a data write completes; taken (swapped to false) by each
    /// flush before it syncs.
    unsynced: AtomicBool,
}

#[derive(Debug, Default)]
struct Meta {
    /// Host offset of each L2 table (0 = none), i.e. the L1 table.
    l1: Vec<u64>,
    /// L2 tables by L1 index, entries as on disk (host byte order here).
    l2: Vec<Option<Box<[u64]>>>,
    /// Refcount table: host offset of each refcount block (0 = none).
    refcount_table: Vec<u64>,
    refblocks: Vec<Option<Box<[u16]>>>,
    /// Next cluster index handed out by the bump allocator.
    next_free: u64,
    /// Guest clusters whose slow-path write is under way.
    in_flight: HashSet<u64>,
    dirty_l1: bool,
    dirty_l2: BTreeSet<usize>,
    dirty_refcount_table: bool,
    dirty_refblocks: BTreeSet<usize>,
}

/// What a write does next, decided under the lock.
enum Plan {
    /// Data clusters, contiguous on the host: `len` bytes in place at `host`.
    InPlace { host: u64, len: u64 },
    /// One cluster rebuilt at `host` from `from` (base data or zeros) plus
    /// the new bytes; `fresh` when `host` was allocated for it.
    Fill { from: ClusterMap, host: u64, fresh: bool },
    /// Whole guest clusters `first..` written into new host clusters.
    Fresh { first: u64, hosts: Vec<u64> },
    /// Another writer owns this cluster right now.
    Wait,
}

/// Metadata to write at a flush, copied out under the lock.
#[derive(Default)]
struct Snapshot {
    refblocks: Vec<(usize, u64, Vec<u8>)>,
    refcount_table: Option<Vec<u8>>,
    l2: Vec<(usize, u64, Vec<u8>)>,
    l1: Option<Vec<u8>>,
}

fn to_be_bytes64(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|e| e.to_be_bytes()).collect()
}

fn read_u64s(file: &File, path: &Path, at: u64, count: usize, what: &'static str) -> Result<Vec<u64>> {
    let mut raw = vec![0u8; count * 8];
    file.read_exact_at(&mut raw, at).map_err(|e| StorageError::io(what, path, at, e))?;
    Ok(raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default())).collect())
}

impl Overlay {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        // A poisoned lock means a panic while tables were being changed; the
        // tables are still whole (every change is a single assignment).
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mapped(&self) -> MappedImage<'_> {
        MappedImage {
            path: &self.path,
            file: &self.file,
            cluster_bits: OVERLAY_CLUSTER_BITS,
            map_bits: OVERLAY_CLUSTER_BITS,
            compression: Compression::Deflate,
            backing: Some(&self.base),
            // pxeroot never writes compressed clusters (an overlay holding
            // one is refused at open).
            cache: None,
        }
    }

    fn maps(&self, off: u64, len: u64) -> Vec<ClusterMap> {
        if len == 0 {
            return Vec::new();
        }
        let meta = self.lock();
        (off / CLUSTER..=(off + len - 1) / CLUSTER).map(|c| meta.map(c)).collect()
    }

    /// Read guest bytes; the caller has checked the range against `size`.
    pub fn read(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let maps = self.maps(off, buf.len() as u64);
        self.mapped().read(&maps, buf, off)
    }

    /// Block status for `[off, off + len)`.
    pub fn extents(&self, off: u64, len: u64) -> Result<Vec<Extent>> {
        let maps = self.maps(off, len);
        self.mapped().extents(&maps, off, len)
    }
}

impl Meta {
    fn map(&self, c: u64) -> ClusterMap {
        let l1i = (c / L2_ENTRIES) as usize;
        match self.l2.get(l1i).and_then(|t| t.as_ref()) {
            // Entries were validated at open and are only ever set by `set`.
            Some(t) => qcow2::decode_l2(t[(c % L2_ENTRIES) as usize], OVERLAY_CLUSTER_BITS, 3).unwrap_or(ClusterMap::Unallocated),
            None => ClusterMap::Unallocated,
        }
    }

    /// Point guest cluster `c` at `map`; its L2 table must exist.
    fn set(&mut self, c: u64, map: ClusterMap) {
        let l1i = (c / L2_ENTRIES) as usize;
        if let Some(t) = self.l2[l1i].as_mut() {
            t[(c % L2_ENTRIES) as usize] = qcow2::encode_l2(map);
            self.dirty_l2.insert(l1i);
        }
    }

    fn set_refcount(&mut self, c: u64, value: u16) {
        let b = (c / REFCOUNTS_PER_BLOCK) as usize;
        if let Some(block) = self.refblocks[b].as_mut() {
            block[(c % REFCOUNTS_PER_BLOCK) as usize] = value;
            self.dirty_refblocks.insert(b);
        }
    }

    /// Give back a cluster reserved for a write that failed.
    fn release(&mut self, c: u64) {
        self.set_refcount(c, 0);
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(overlay = %self.path.display(), error = %e, "final flush of overlay failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(size: usize) -> (tempfile::TempDir, Arc<BaseImage>, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base.img");
        let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&base, content).unwrap();
        let base = Arc::new(BaseImage::open(&base).unwrap());
        let path = d.path().join("o.qcow2");
        (d, base, path)
    }

    #[test]
    fn test_overlay_racing_writers_into_new_clusters_lose_nothing() {
        let (_d, base, path) = setup(4 << 20);
        let o = Arc::new(Overlay::create(&path, base).unwrap());
        // 8 threads, each owning every 8th 512-byte sector of clusters 3..7.
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for sector in (t..(4 * 128)).step_by(8) {
                        let off = 3 * CLUSTER + sector * 512;
                        o.write(&[t as u8 + 1; 512], off).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut buf = vec![0u8; 4 * CLUSTER as usize];
        o.read(&mut buf, 3 * CLUSTER).unwrap();
        for (sector, chunk) in buf.chunks(512).enumerate() {
            assert!(chunk.iter().all(|&b| b == (sector % 8) as u8 + 1), "sector {sector} lost");
        }
        // Exactly one host cluster per guest cluster (plus one L2 table).
        let meta = o.lock();
        let used: u64 = meta.refblocks[0].as_ref().unwrap().iter().map(|&r| r as u64).sum();
        let layout = OverlayLayout::new(4 << 20);
        assert_eq!(used, layout.first_free_cluster + 1 + 4);
    }

    #[test]
    fn test_overlay_reopen_after_flush_keeps_data_and_reclaims_leaks() {
        let (_d, base, path) = setup(1 << 20);
        {
            let o = Overlay::create(&path, base.clone()).unwrap();
            o.write(&[7u8; 1000], 70_000).unwrap();
            o.write_zeroes(0, CLUSTER, false, true).unwrap();
            o.flush().unwrap();
            // A reservation that never got published: refcount 1, no L2
            // entry, written to disk by the next flush: a leak.
            let mut meta = o.lock();
            o.alloc(&mut meta).unwrap();
            drop(meta);
            o.flush().unwrap();
        }
        let o = Overlay::open(&path, base).unwrap();
        let mut buf = vec![0u8; 1000];
        o.read(&mut buf, 70_000).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let mut z = vec![1u8; 100];
        o.read(&mut z, 10).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        let meta = o.lock();
        let used: u64 = meta.refblocks[0].as_ref().unwrap().iter().map(|&r| r as u64).sum();
        assert_eq!(used, OverlayLayout::new(1 << 20).first_free_cluster + 2, "leak not reclaimed");
    }

    #[test]
    fn test_overlay_trim_gives_blocks_back_and_reads_zeros() {
        use std::os::unix::fs::MetadataExt;
        let (_d, base, path) = setup(4 << 20);
        let o = Overlay::create(&path, base).unwrap();
        o.write(&vec![9u8; 16 * CLUSTER as usize], CLUSTER).unwrap();
        o.flush().unwrap();
        let before = std::fs::metadata(&path).unwrap().blocks();
        o.trim(CLUSTER + 100, 16 * CLUSTER).unwrap(); // 15 whole clusters and two partial ends
        o.flush().unwrap();
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(after + 15 * CLUSTER / 512 <= before + 8, "no blocks given back: {before} -> {after}");
        let mut buf = vec![1u8; CLUSTER as usize];
        o.read(&mut buf, 2 * CLUSTER).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        o.read(&mut buf, CLUSTER).unwrap();
        assert!(buf.iter().all(|&b| b == 9), "a partially trimmed cluster keeps its data");
        // A write into a trimmed cluster works (it reuses the host cluster).
        o.write(&[5u8; 10], 3 * CLUSTER + 7).unwrap();
        o.read(&mut buf, 3 * CLUSTER).unwrap();
        assert_eq!(&buf[7..17], &[5u8; 10]);
        assert!(buf[..7].iter().chain(&buf[17..]).all(|&b| b == 0));
    }

    #[test]
    fn test_overlay_fast_zero_unaligned_refused_before_any_change() {
        let (_d, base, path) = setup(1 << 20);
        let o = Overlay::create(&path, base).unwrap();
        assert!(matches!(o.write_zeroes(512, 4096, false, true), Err(StorageError::FastZeroUnsupported)));
        assert_eq!(o.lock().map(0), ClusterMap::Unallocated);
    }
}
