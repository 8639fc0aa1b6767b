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
    /// Create a new, empty overlay at `path` over `base` and open it. The file
    /// appears under its name only once it is complete (write, sync, rename).
    pub fn create(path: &Path, base: Arc<BaseImage>) -> Result<Overlay> {
        let layout = OverlayLayout::new(base.size());
        let backing = base.path().to_string_lossy().into_owned();
        let header = layout
            .header_cluster(&backing, base.format().name())
            .map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?;
        let tmp = path.with_extension("qcow2.creating");
        let io = |op, off, e| StorageError::io(op, &tmp, off, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|source| StorageError::Open { path: tmp.clone(), source })?;
        file.write_all_at(&header, 0).map_err(|e| io("write header", 0, e))?;
        let rt_off = layout.refcount_table_cluster * CLUSTER;
        let rb_off = layout.first_refblock_cluster * CLUSTER;
        file.write_all_at(&rb_off.to_be_bytes(), rt_off).map_err(|e| io("write refcount table", rt_off, e))?;
        let mut refblock = vec![0u8; CLUSTER as usize];
        for c in 0..layout.first_free_cluster as usize {
            refblock[2 * c..2 * c + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        file.write_all_at(&refblock, rb_off).map_err(|e| io("write refcount block", rb_off, e))?;
        // Real blocks for all metadata, so flushes never meet a full disk.
        sys::allocate(&file, 0, layout.first_free_cluster * CLUSTER).map_err(|e| io("allocate", 0, e))?;
        file.sync_all().map_err(|e| io("sync", 0, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| StorageError::io("rename", path, 0, e))?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = File::open(dir) {
                d.sync_all().map_err(|e| StorageError::io("sync directory", dir, 0, e))?;
            }
        }
        Overlay::open(path, base)
    }

    /// Open an existing overlay, check it belongs to `base`, load its
    /// metadata and reclaim clusters leaked by a crash.
    pub fn open(path: &Path, base: Arc<BaseImage>) -> Result<Overlay> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| StorageError::Open { path: path.to_path_buf(), source })?;
        sys::lock_exclusive_write(&file).map_err(|_| StorageError::Locked { path: path.to_path_buf() })?;
        let corrupt = |reason: String| StorageError::Corrupt { path: path.to_path_buf(), reason };
        let file_len = file.metadata().map_err(|e| StorageError::io("stat", path, 0, e))?.len();
        let mut first = vec![0u8; CLUSTER.min(file_len) as usize];
        file.read_exact_at(&mut first, 0).map_err(|e| StorageError::io("read header", path, 0, e))?;
        let h = Header::parse(&first).map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?;
        if h.incompatible & (qcow2::INCOMPAT_DIRTY | qcow2::INCOMPAT_CORRUPT) != 0 {
            return Err(StorageError::Unclean { path: path.to_path_buf() });
        }
        if h.version != 3 || h.cluster_bits != OVERLAY_CLUSTER_BITS || h.refcount_order != 4 {
            return Err(corrupt(format!(
                "pxeroot writes qcow2 v3 with 64 KiB clusters and 16-bit refcounts, this is v{} with {}-bit clusters and refcount order {}",
                h.version, h.cluster_bits, h.refcount_order
            )));
        }
        if h.incompatible != 0 || h.nb_snapshots != 0 {
            return Err(corrupt("it has internal snapshots or incompatible features pxeroot does not write".into()));
        }
        let backing = h.backing_name(&first).map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?;
        let expected = base.path().to_string_lossy();
        if backing.as_deref() != Some(&*expected) {
            return Err(StorageError::BaseChanged {
                overlay: path.to_path_buf(),
                reason: format!("its backing file is {:?}, the configured base is {:?}", backing.unwrap_or_default(), expected),
            });
        }
        if h.size != base.size() {
            return Err(StorageError::BaseChanged {
                overlay: path.to_path_buf(),
                reason: format!("it is {} bytes, the base is now {} bytes", h.size, base.size()),
            });
        }

        let l1_count = Header::l1_entries_for(h.size, h.cluster_bits) as usize;
        let l1_raw = read_u64s(&file, path, h.l1_table_offset, l1_count, "read L1")?;
        let rt_count = (h.refcount_table_clusters as u64 * CLUSTER / 8) as usize;
        let rt_raw = read_u64s(&file, path, h.refcount_table_offset, rt_count, "read refcount table")?;
        let max_clusters = rt_count as u64 * REFCOUNTS_PER_BLOCK;

        let mut meta = Meta {
            l1: l1_raw.iter().map(|e| e & qcow2::OFFSET_MASK).collect(),
            l2: vec![None; l1_count],
            refcount_table: rt_raw.iter().map(|e| e & qcow2::OFFSET_MASK).collect(),
            refblocks: vec![None; rt_count],
            ..Meta::default()
        };
        // Expected refcounts, built from every reference in the image.
        let mut referenced: Vec<u64> = Vec::new();
        let clusters_of = |off: u64, len: u64| (off / CLUSTER)..(off + len).div_ceil(CLUSTER);
        referenced.extend(clusters_of(0, 1));
        referenced.extend(clusters_of(h.l1_table_offset, l1_count as u64 * 8));
        referenced.extend(clusters_of(h.refcount_table_offset, h.refcount_table_clusters as u64 * CLUSTER));
        for (i, &rb) in meta.refcount_table.iter().enumerate() {
            if rb == 0 {
                continue;
            }
            referenced.push(rb / CLUSTER);
            let mut raw = vec![0u8; CLUSTER as usize];
            file.read_exact_at(&mut raw, rb).map_err(|e| StorageError::io("read refcount block", path, rb, e))?;
            meta.refblocks[i] = Some(raw.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect());
        }
        for i in 0..l1_count {
            let at = meta.l1[i];
            if at == 0 {
                continue;
            }
            referenced.push(at / CLUSTER);
            let table = read_u64s(&file, path, at, L2_ENTRIES as usize, "read L2")?;
            for &e in &table {
                match qcow2::decode_l2(e, OVERLAY_CLUSTER_BITS, 3)
                    .map_err(|source| StorageError::Format { path: path.to_path_buf(), source })?
                {
                    ClusterMap::Data(hst) | ClusterMap::ZeroAlloc(hst) => referenced.push(hst / CLUSTER),
                    ClusterMap::Compressed { .. } => {
                        return Err(corrupt("it holds compressed clusters, which pxeroot does not write into".into()))
                    }
                    ClusterMap::Zero | ClusterMap::Unallocated => {}
                }
            }
            meta.l2[i] = Some(table.into_boxed_slice());
        }
        referenced.sort_unstable();
        if let Some(w) = referenced.windows(2).find(|w| w[0] == w[1]) {
            return Err(corrupt(format!("cluster {} is referenced twice", w[0])));
        }
        let refcount = |meta: &Meta, c: u64| -> u16 {
            let (b, i) = ((c / REFCOUNTS_PER_BLOCK) as usize, (c % REFCOUNTS_PER_BLOCK) as usize);
            meta.refblocks.get(b).and_then(|blk| blk.as_ref()).map_or(0, |blk| blk[i])
        };
        for &c in &referenced {
            if c >= max_clusters || refcount(&meta, c) != 1 {
                return Err(corrupt(format!(
                    "cluster {c} is in use but its refcount is {}; run `qemu-img check -r all {}`",
                    refcount(&meta, c),
                    path.display()
                )));
            }
        }
        // Everything counted but not referenced is a leak from a crash.
        let referenced: HashSet<u64> = referenced.into_iter().collect();
        let mut leaks = 0u64;
        let mut highest = 0u64;
        for b in 0..meta.refblocks.len() {
            let Some(block) = meta.refblocks[b].as_mut() else { continue };
            for (i, rc) in block.iter_mut().enumerate() {
                let c = b as u64 * REFCOUNTS_PER_BLOCK + i as u64;
                if *rc != 0 && !referenced.contains(&c) {
                    *rc = 0;
                    leaks += 1;
                    meta.dirty_refblocks.insert(b);
                } else if *rc != 0 {
                    highest = c;
                }
            }
        }
        meta.next_free = (highest + 1).max(file_len.div_ceil(CLUSTER));
        let overlay = Overlay {
            path: path.to_path_buf(),
            file,
            base,
            size: h.size,
            l1_offset: h.l1_table_offset,
            refcount_table_offset: h.refcount_table_offset,
            max_clusters,
            meta: Mutex::new(meta),
            settled: Condvar::new(),
            flushing: Mutex::new(()),
            unsynced: AtomicBool::new(false),
        };
        if leaks > 0 {
            tracing::warn!(overlay = %path.display(), leaks, "reclaimed clusters leaked by an earlier crash");
            overlay.flush()?;
        }
        Ok(overlay)
    }

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

    /// Write guest bytes (not yet durable: see `flush`). Runs of clusters
    /// go to the file in one `pwrite` each: contiguous data clusters in
    /// place, and whole new clusters allocated side by side.
    pub fn write(&self, data: &[u8], off: u64) -> Result<()> {
        let end = off + data.len() as u64;
        let mut pos = off;
        while pos < end {
            let plan = {
                let mut meta = self.lock();
                loop {
                    match self.plan(&mut meta, pos, end)? {
                        Plan::Wait => meta = self.settled.wait(meta).unwrap_or_else(|p| p.into_inner()),
                        plan => break plan,
                    }
                }
            };
            let done = self.carry_out(plan, &data[(pos - off) as usize..], pos);
            // Marked once the bytes are in the file (even partly, on error),
            // so a flush that starts after this write completed syncs it.
            self.unsynced.store(true, Ordering::Release);
            pos += done?;
        }
        Ok(())
    }

    /// Make `[off, off + len)` read as zeros. Whole clusters only change
    /// metadata and, without `no_hole`, give their disk blocks back; with
    /// `no_hole`, unallocated ones get allocated. Partial clusters are
    /// written. With `fast`, a range that would need writing is refused
    /// before anything changes.
    pub fn write_zeroes(&self, off: u64, len: u64, no_hole: bool, fast: bool) -> Result<()> {
        if fast && (!off.is_multiple_of(CLUSTER) || !len.is_multiple_of(CLUSTER)) && off + len != self.size {
            return Err(StorageError::FastZeroUnsupported);
        }
        static ZEROS: [u8; CLUSTER as usize] = [0; CLUSTER as usize];
        self.for_each_cluster(off, len, |c, in_cluster, _pos, piece| {
            let whole = in_cluster == 0 && (piece == CLUSTER || c * CLUSTER + piece == self.size);
            if whole {
                return self.zero_whole_cluster(c, no_hole);
            }
            self.write(&ZEROS[..piece as usize], c * CLUSTER + in_cluster)
        })
    }

    /// TRIM: the client no longer needs `[off, off + len)`. Whole clusters
    /// read as zeros from now on and their host clusters give their disk
    /// blocks back (a hole punched in the file; the cluster stays allocated
    /// in qcow2 terms, so a later write reuses it). Partial clusters are left
    /// as they are: TRIM is advisory, and the client may not rely on what a
    /// trimmed range reads.
    pub fn trim(&self, off: u64, len: u64) -> Result<()> {
        self.for_each_cluster(off, len, |c, in_cluster, _pos, piece| {
            let whole = in_cluster == 0 && (piece == CLUSTER || c * CLUSTER + piece == self.size);
            if !whole {
                return Ok(());
            }
            self.zero_whole_cluster(c, false)
        })
    }

    /// Call `f(cluster, offset in cluster, guest position, length)` for each
    /// cluster piece of `[off, off + len)`.
    fn for_each_cluster(&self, off: u64, len: u64, mut f: impl FnMut(u64, u64, u64, u64) -> Result<()>) -> Result<()> {
        let mut pos = off;
        while pos < off + len {
            let in_cluster = pos % CLUSTER;
            let piece = (CLUSTER - in_cluster).min(off + len - pos);
            f(pos / CLUSTER, in_cluster, pos, piece)?;
            pos += piece;
        }
        Ok(())
    }

    /// Zero a whole cluster in metadata. With `no_hole` its disk blocks stay
    /// (a hole becomes a preallocated zero cluster); without, a host cluster
    /// it has gives its blocks back to the file system (a hole punched in
    /// the file; the host cluster stays reserved, so a later write reuses
    /// it): the client let the server deallocate.
    fn zero_whole_cluster(&self, c: u64, no_hole: bool) -> Result<()> {
        let mut meta = self.lock();
        while meta.in_flight.contains(&c) {
            meta = self.settled.wait(meta).unwrap_or_else(|p| p.into_inner());
        }
        let new = match meta.map(c) {
            ClusterMap::Data(h) | ClusterMap::ZeroAlloc(h) => ClusterMap::ZeroAlloc(h),
            _ if no_hole => {
                // Allocated but reading as zeros: reserve a host cluster and
                // give it blocks (so nothing references past the end of the
                // file), without writing any data.
                self.ensure_l2(&mut meta, c)?;
                let host = self.alloc(&mut meta)? * CLUSTER;
                if let Err(e) = sys::allocate(&self.file, host, CLUSTER) {
                    meta.release(host / CLUSTER);
                    return Err(StorageError::io("fallocate", &self.path, host, e));
                }
                ClusterMap::ZeroAlloc(host)
            }
            _ => ClusterMap::Zero,
        };
        if meta.map(c) != new {
            self.ensure_l2(&mut meta, c)?;
            meta.set(c, new);
        }
        if let (false, ClusterMap::ZeroAlloc(h)) = (no_hole, new) {
            // Under the lock: no writer can plan a fill of this cluster
            // (which would reuse `h`) until the hole is punched.
            sys::punch_hole(&self.file, h, CLUSTER).map_err(|e| StorageError::io("punch hole", &self.path, h, e))?;
        }
        Ok(())
    }

    /// Decide, under the lock, how to write from guest byte `pos` on (up to
    /// `end`): the first cluster's state picks the kind of run, and the run
    /// grows over following clusters of the same kind.
    fn plan(&self, meta: &mut Meta, pos: u64, end: u64) -> Result<Plan> {
        let c = pos / CLUSTER;
        let in_cluster = pos % CLUSTER;
        if meta.in_flight.contains(&c) {
            return Ok(Plan::Wait);
        }
        let whole = |n: u64| (n + 1) * CLUSTER <= end;
        let from = meta.map(c);
        match from {
            ClusterMap::Data(h) => {
                let mut len = (CLUSTER - in_cluster).min(end - pos);
                let mut n = c + 1;
                while pos + len < end && !meta.in_flight.contains(&n) && meta.map(n) == ClusterMap::Data(h + (n - c) * CLUSTER) {
                    len += CLUSTER.min(end - pos - len);
                    n += 1;
                }
                Ok(Plan::InPlace { host: h + in_cluster, len })
            }
            ClusterMap::Unallocated | ClusterMap::Zero if in_cluster == 0 && whole(c) => {
                // Whole new clusters: nothing to copy from below.
                self.ensure_l2(meta, c)?;
                let mut hosts = vec![self.alloc(meta)? * CLUSTER];
                meta.in_flight.insert(c);
                let mut n = c + 1;
                while whole(n) && !meta.in_flight.contains(&n) && matches!(meta.map(n), ClusterMap::Unallocated | ClusterMap::Zero) {
                    // A failure here ends the run; the next plan reports it.
                    if self.ensure_l2(meta, n).is_err() {
                        break;
                    }
                    let Ok(host) = self.alloc(meta) else { break };
                    hosts.push(host * CLUSTER);
                    meta.in_flight.insert(n);
                    n += 1;
                }
                Ok(Plan::Fresh { first: c, hosts })
            }
            _ => {
                let (host, fresh) = match from {
                    ClusterMap::ZeroAlloc(h) => (h, false),
                    _ => {
                        self.ensure_l2(meta, c)?;
                        (self.alloc(meta)? * CLUSTER, true)
                    }
                };
                meta.in_flight.insert(c);
                Ok(Plan::Fill { from, host, fresh })
            }
        }
    }

    /// Do the I/O of a plan made by `plan`; returns the guest bytes written.
    fn carry_out(&self, plan: Plan, data: &[u8], pos: u64) -> Result<u64> {
        let io = |e, at| StorageError::io("write", &self.path, at, e);
        match plan {
            Plan::Wait => Ok(0),
            Plan::InPlace { host, len } => {
                self.file.write_all_at(&data[..len as usize], host).map_err(|e| io(e, host))?;
                Ok(len)
            }
            Plan::Fill { from, host, fresh } => {
                let c = pos / CLUSTER;
                let in_cluster = pos % CLUSTER;
                let len = (CLUSTER - in_cluster).min(data.len() as u64);
                let result = self.fill_cluster(c, from, host, in_cluster, &data[..len as usize]);
                self.settle(c, &[host], result.is_ok(), fresh);
                result.map(|()| len)
            }
            Plan::Fresh { first, hosts } => {
                // One pwrite per stretch of contiguous host clusters.
                let mut result = Ok(());
                let mut i = 0;
                while i < hosts.len() && result.is_ok() {
                    let mut j = i + 1;
                    while j < hosts.len() && hosts[j] == hosts[j - 1] + CLUSTER {
                        j += 1;
                    }
                    let bytes = &data[i * CLUSTER as usize..j * CLUSTER as usize];
                    result = self.file.write_all_at(bytes, hosts[i]).map_err(|e| io(e, hosts[i]));
                    i = j;
                }
                self.settle(first, &hosts, result.is_ok(), true);
                result.map(|()| hosts.len() as u64 * CLUSTER)
            }
        }
    }

    /// Publish (or, after a failed write, give back) the host clusters of
    /// guest clusters `first..` and wake writers waiting on them.
    fn settle(&self, first: u64, hosts: &[u64], ok: bool, fresh: bool) {
        let mut meta = self.lock();
        for (k, &host) in hosts.iter().enumerate() {
            let c = first + k as u64;
            meta.in_flight.remove(&c);
            if ok {
                meta.set(c, ClusterMap::Data(host));
            } else if fresh {
                meta.release(host / CLUSTER);
            }
        }
        drop(meta);
        self.settled.notify_all();
    }

    /// Write the whole of cluster `c` at `host`: its current content (from
    /// the base, or zeros) with `data` laid over it at `in_cluster`.
    fn fill_cluster(&self, c: u64, from: ClusterMap, host: u64, in_cluster: u64, data: &[u8]) -> Result<()> {
        let guest = c * CLUSTER;
        let valid = CLUSTER.min(self.size - guest) as usize;
        let mut buf = vec![0u8; CLUSTER as usize];
        if from == ClusterMap::Unallocated {
            self.base.read_beyond_end_as_zero(&mut buf[..valid], guest)?;
        }
        buf[in_cluster as usize..in_cluster as usize + data.len()].copy_from_slice(data);
        self.file.write_all_at(&buf, host).map_err(|e| StorageError::io("write", &self.path, host, e))
    }

    /// Make sure the L2 table covering guest cluster `c` exists.
    fn ensure_l2(&self, meta: &mut Meta, c: u64) -> Result<()> {
        let l1i = (c / L2_ENTRIES) as usize;
        if meta.l1[l1i] == 0 {
            let host = self.alloc_metadata(meta)?;
            meta.l1[l1i] = host;
            meta.l2[l1i] = Some(vec![0u64; L2_ENTRIES as usize].into_boxed_slice());
            meta.dirty_l1 = true;
            meta.dirty_l2.insert(l1i);
        }
        Ok(())
    }

    /// Take the next free cluster (refcount 0 -> 1), starting a new refcount
    /// block first when the cluster is not covered yet.
    fn alloc(&self, meta: &mut Meta) -> Result<u64> {
        loop {
            let c = meta.next_free;
            if c >= self.max_clusters {
                return Err(StorageError::OverlayFull { path: self.path.clone(), max_clusters: self.max_clusters });
            }
            let b = (c / REFCOUNTS_PER_BLOCK) as usize;
            meta.next_free += 1;
            if meta.refblocks[b].is_none() {
                // The new block lives in cluster `c` and counts itself.
                if let Err(e) = sys::allocate(&self.file, c * CLUSTER, CLUSTER) {
                    meta.next_free -= 1;
                    return Err(StorageError::io("allocate refcount block", &self.path, c * CLUSTER, e));
                }
                meta.refblocks[b] = Some(vec![0u16; REFCOUNTS_PER_BLOCK as usize].into_boxed_slice());
                meta.refcount_table[b] = c * CLUSTER;
                meta.dirty_refcount_table = true;
                meta.set_refcount(c, 1);
                continue;
            }
            meta.set_refcount(c, 1);
            return Ok(c);
        }
    }

    /// A cluster for metadata (an L2 table), with disk blocks: a full disk
    /// shows up here, at the write that needs the table, not at a flush.
    fn alloc_metadata(&self, meta: &mut Meta) -> Result<u64> {
        let host = self.alloc(meta)? * CLUSTER;
        if let Err(e) = sys::allocate(&self.file, host, CLUSTER) {
            meta.release(host / CLUSTER);
            return Err(StorageError::io("allocate L2 table", &self.path, host, e));
        }
        Ok(host)
    }

    /// Make every write that completed before this call durable, writing
    /// metadata in crash-safe order (see the module notes).
    pub fn flush(&self) -> Result<()> {
        let _serial = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before the sync: a write completing after this point sets
        // the flag again and is synced by the next flush.
        let data_written = self.unsynced.swap(false, Ordering::AcqRel);
        let snap = self.snapshot();
        let result = self.write_snapshot(&snap, data_written);
        if result.is_err() {
            // Put the metadata back as dirty so the next flush retries it.
            let mut meta = self.lock();
            meta.dirty_refblocks.extend(snap.refblocks.iter().map(|(i, _, _)| *i));
            meta.dirty_l2.extend(snap.l2.iter().map(|(i, _, _)| *i));
            meta.dirty_l1 |= snap.l1.is_some();
            meta.dirty_refcount_table |= snap.refcount_table.is_some();
            self.unsynced.store(true, Ordering::Release);
        }
        result
    }

    fn snapshot(&self) -> Snapshot {
        let mut meta = self.lock();
        let mut s = Snapshot::default();
        for b in std::mem::take(&mut meta.dirty_refblocks) {
            if let Some(block) = &meta.refblocks[b] {
                let bytes = block.iter().flat_map(|r| r.to_be_bytes()).collect();
                s.refblocks.push((b, meta.refcount_table[b], bytes));
            }
        }
        if std::mem::take(&mut meta.dirty_refcount_table) {
            s.refcount_table = Some(to_be_bytes64(&meta.refcount_table));
        }
        for i in std::mem::take(&mut meta.dirty_l2) {
            if let Some(t) = &meta.l2[i] {
                s.l2.push((i, meta.l1[i], to_be_bytes64(t)));
            }
        }
        if std::mem::take(&mut meta.dirty_l1) {
            let l1: Vec<u64> = meta.l1.iter().map(|&e| if e == 0 { 0 } else { e | qcow2::OFLAG_COPIED }).collect();
            s.l1 = Some(to_be_bytes64(&l1));
        }
        s
    }

    fn write_snapshot(&self, s: &Snapshot, data_written: bool) -> Result<()> {
        let write = |bytes: &[u8], at: u64, what| self.file.write_all_at(bytes, at).map_err(|e| StorageError::io(what, &self.path, at, e));
        let sync = || self.file.sync_data().map_err(|e| StorageError::io("fdatasync", &self.path, 0, e));
        let mut synced = false;
        if !s.refblocks.is_empty() {
            for (_, at, bytes) in &s.refblocks {
                write(bytes, *at, "write refcount block")?;
            }
            sync()?;
            synced = true;
        }
        if let Some(rt) = &s.refcount_table {
            write(rt, self.refcount_table_offset, "write refcount table")?;
            sync()?;
            synced = true;
        }
        if !s.l2.is_empty() {
            for (_, at, bytes) in &s.l2 {
                write(bytes, *at, "write L2 table")?;
            }
            sync()?;
            synced = true;
        }
        if let Some(l1) = &s.l1 {
            write(l1, self.l1_offset, "write L1 table")?;
            sync()?;
            synced = true;
        }
        if !synced && data_written {
            sync()?;
        }
        Ok(())
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
