//! Reading through a qcow2 cluster map: shared by qcow2 bases and overlays.
//!
//! The caller looks up the maps of the clusters a request touches (for an
//! overlay, under its metadata lock), then this module does the I/O with no
//! lock held: runs of data clusters that are contiguous on the host become one
//! `pread`, runs of unallocated clusters one read from the backing image.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::base::BaseImage;
use super::qcow2::{ClusterMap, Compression};
use super::{Extent, Result, StorageError};

/// What one image contributes to a read: its file, geometry and backing.
pub(crate) struct MappedImage<'a> {
    pub path: &'a Path,
    pub file: &'a File,
    pub cluster_bits: u32,
    /// The size of what one map covers: the cluster, or with extended L2
    /// entries the subcluster (`cluster_bits - 5`).
    pub map_bits: u32,
    pub compression: Compression,
    pub backing: Option<&'a BaseImage>,
    /// Where decompressed clusters are kept (a compressed base's); `None`
    /// for an image without compressed clusters.
    pub cache: Option<&'a ClusterCache>,
}

/// Bytes of decompressed clusters kept per compressed base image: 256
/// clusters of qemu's default 64 KiB.
pub const DECOMPRESSED_CACHE_BYTES: usize = 16 << 20;

/// The most recently used decompressed clusters of one compressed base.
/// Without it a 4 KiB read inflates the whole 64 KiB cluster it falls in,
/// sixteen times over for a cluster read in 4 KiB pieces; every client of
/// the image shares it.
#[derive(Debug, Default)]
pub(crate) struct ClusterCache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    /// Host offset of the compressed cluster -> its bytes, last use.
    clusters: HashMap<u64, (Arc<[u8]>, u64)>,
    clock: u64,
    bytes: usize,
}

impl ClusterCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        // Every change under the lock is whole: a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster at `host`, decompressed by `make` (outside the lock) when
    /// it is not kept.
    fn get(&self, host: u64, make: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<[u8]>> {
        {
            let mut c = self.lock();
            c.clock += 1;
            let now = c.clock;
            if let Some((bytes, used)) = c.clusters.get_mut(&host) {
                *used = now;
                return Ok(bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = make()?.into();
        let mut c = self.lock();
        c.clock += 1;
        let now = c.clock;
        if let Some((old, _)) = c.clusters.insert(host, (bytes.clone(), now)) {
            c.bytes -= old.len();
        }
        c.bytes += bytes.len();
        while c.bytes > DECOMPRESSED_CACHE_BYTES {
            let Some(oldest) = c.clusters.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) else { break };
            if let Some((gone, _)) = c.clusters.remove(&oldest) {
                c.bytes -= gone.len();
            }
        }
        Ok(bytes)
    }
}

enum Run {
    Host(u64),
    Backing,
    Zero,
    Compressed { host: u64, len: u64 },
}

impl MappedImage<'_> {
    /// Fill `buf` with the guest bytes at `off`. `maps[i]` is the map of
    /// cluster (or subcluster) `(off >> map_bits) + i`.
    pub fn read(&self, maps: &[ClusterMap], buf: &mut [u8], off: u64) -> Result<()> {
        let cs = 1u64 << self.map_bits;
        let first = off >> self.map_bits;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let idx = ((pos >> self.map_bits) - first) as usize;
            let in_cluster = pos & (cs - 1);
            let run = match maps[idx] {
                ClusterMap::Data(h) => Run::Host(h + in_cluster),
                ClusterMap::Unallocated => Run::Backing,
                ClusterMap::Zero | ClusterMap::ZeroAlloc(_) => Run::Zero,
                ClusterMap::Compressed { host, len } => Run::Compressed { host, len },
            };
            // Extend the run over following clusters of the same kind.
            let mut len = (cs - in_cluster).min((buf.len() - done) as u64);
            if !matches!(run, Run::Compressed { .. }) {
                let mut next = idx + 1;
                while done as u64 + len < buf.len() as u64 {
                    let same = match (&run, maps[next]) {
                        (Run::Host(h), ClusterMap::Data(n)) => n == h + len,
                        (Run::Backing, ClusterMap::Unallocated) => true,
                        (Run::Zero, ClusterMap::Zero | ClusterMap::ZeroAlloc(_)) => true,
                        _ => false,
                    };
                    if !same {
                        break;
                    }
                    len += cs.min(buf.len() as u64 - done as u64 - len);
                    next += 1;
                }
            }
            let out = &mut buf[done..done + len as usize];
            match run {
                Run::Host(h) => self.file.read_exact_at(out, h).map_err(|e| StorageError::io("read", self.path, h, e))?,
                Run::Zero => out.fill(0),
                Run::Backing => match self.backing {
                    Some(b) => b.read_beyond_end_as_zero(out, pos)?,
                    None => out.fill(0),
                },
                Run::Compressed { host, len: clen } => {
                    let cluster: Arc<[u8]> = match self.cache {
                        Some(cache) => cache.get(host, || self.decompress(host, clen))?,
                        None => self.decompress(host, clen)?.into(),
                    };
                    // Compressed whole: the offset in the cluster, not the subcluster.
                    let at = (pos & ((1u64 << self.cluster_bits) - 1)) as usize;
                    out.copy_from_slice(&cluster[at..at + out.len()]);
                }
            }
            done += len as usize;
        }
        Ok(())
    }

    /// Block status over the clusters in `maps`, for `[off, off + len)`.
    pub fn extents(&self, maps: &[ClusterMap], off: u64, len: u64) -> Result<Vec<Extent>> {
        let cs = 1u64 << self.map_bits;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = off;
        let end = off + len;
        for map in maps {
            if pos >= end {
                break;
            }
            let piece = (cs - (pos & (cs - 1))).min(end - pos);
            let pieces: Vec<Extent> = match map {
                ClusterMap::Data(_) | ClusterMap::Compressed { .. } => {
                    vec![Extent { len: piece, zero: false, hole: false }]
                }
                ClusterMap::ZeroAlloc(_) => vec![Extent { len: piece, zero: true, hole: false }],
                ClusterMap::Zero => vec![Extent { len: piece, zero: true, hole: true }],
                ClusterMap::Unallocated => match self.backing {
                    Some(b) => b.extents(pos, piece)?,
                    None => vec![Extent { len: piece, zero: true, hole: true }],
                },
            };
            for e in pieces {
                push_extent(&mut out, e);
            }
            pos += piece;
        }
        Ok(out)
    }

    fn decompress(&self, host: u64, len: u64) -> Result<Vec<u8>> {
        let cs = 1usize << self.cluster_bits;
        let mut raw = vec![0u8; len as usize];
        // The last sector of the last compressed cluster may run past the end
        // of the file: read what is there.
        let mut got = 0;
        while got < raw.len() {
            match self.file.read_at(&mut raw[got..], host + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::io("read compressed", self.path, host, e)),
            }
        }
        raw.truncate(got);
        let mut out = vec![0u8; cs];
        let bad = || StorageError::Decompress { path: self.path.to_path_buf(), offset: host };
        match self.compression {
            Compression::Deflate => {
                let mut d = flate2::read::DeflateDecoder::new(&raw[..]);
                d.read_exact(&mut out).map_err(|_| bad())?;
            }
            Compression::Zstd => {
                let mut d = ruzstd::StreamingDecoder::new(&raw[..]).map_err(|_| bad())?;
                d.read_exact(&mut out).map_err(|_| bad())?;
            }
        }
        Ok(out)
    }
}

/// Append an extent, merging it into the previous one when they agree.
pub(crate) fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.zero == e.zero && last.hole == e.hole => last.len += e.len,
        _ => out.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: usize = 64 << 10;

    fn cluster(tag: u8) -> Result<Vec<u8>> {
        Ok(vec![tag; CLUSTER])
    }

    /// A decompression that counts itself in `made`.
    fn counted(made: &std::cell::Cell<u64>, tag: u8) -> impl FnOnce() -> Result<Vec<u8>> + '_ {
        move || {
            made.set(made.get() + 1);
            cluster(tag)
        }
    }

    #[test]
    fn test_cluster_cache_decompresses_each_cluster_once() {
        let cache = ClusterCache::default();
        let made = std::cell::Cell::new(0);
        for _ in 0..16 {
            assert_eq!(cache.get(1 << 20, counted(&made, 7)).unwrap()[CLUSTER - 1], 7);
        }
        assert_eq!(cache.get(2 << 20, counted(&made, 9)).unwrap()[0], 9);
        assert_eq!(made.get(), 2);
        // A failed decompression is not kept.
        let bad = || Err(StorageError::Decompress { path: "x".into(), offset: 3 << 20 });
        assert!(cache.get(3 << 20, bad).is_err());
        assert_eq!(cache.get(3 << 20, || cluster(1)).unwrap()[0], 1);
    }

    #[test]
    fn test_cluster_cache_keeps_the_recently_used_within_its_budget() {
        let cache = ClusterCache::default();
        let fits = (DECOMPRESSED_CACHE_BYTES / CLUSTER) as u64;
        for i in 0..fits {
            cache.get(i * CLUSTER as u64, || cluster(i as u8)).unwrap();
        }
        // Cluster 0 used again: the next insert evicts cluster 1 instead.
        cache.get(0, || panic!("cluster 0 is kept")).unwrap();
        cache.get(fits * CLUSTER as u64, || cluster(0xee)).unwrap();
        assert!(cache.lock().bytes <= DECOMPRESSED_CACHE_BYTES);
        cache.get(0, || panic!("cluster 0 is still kept")).unwrap();
        let made = std::cell::Cell::new(0);
        cache.get(CLUSTER as u64, counted(&made, 1)).unwrap();
        assert_eq!(made.get(), 1, "cluster 1, the least recently used, was evicted");
    }
}
