//! The qcow2 format, sans-IO: header and header extensions, L1/L2 entries,
//! and the layout of a new overlay. Source of truth: QEMU's
//! `docs/interop/qcow2.rst`; `qemu-img check` is the oracle in the tests.
//!
//! Everything here works on byte slices; reading and writing the file is the
//! job of `base.rs` (read-only images) and `overlay.rs` (our overlays).

use thiserror::Error;

pub const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
/// Header extension: backing file format name ("raw" or "qcow2").
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
pub const EXT_END: u32 = 0;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// L1/L2 "COPIED": refcount is exactly 1.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// L2: the cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// L2 (v3): the cluster reads as zeros.
pub const OFLAG_ZERO: u64 = 1;
/// Host offset bits 9..55 of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

/// Subclusters per cluster with extended L2 entries, 32 (one bit each in
/// the entry's allocation and zero bitmaps).
pub const SUBCLUSTER_SHIFT: u32 = 5;
pub const SUBCLUSTERS: usize = 1 << SUBCLUSTER_SHIFT;
/// Extended L2 needs clusters of 16 KiB or more (subclusters of 512 B).
pub const MIN_EXTENDED_CLUSTER_BITS: u32 = 14;
/// Cluster sizes a qcow2 image may use: 512 B .. 2 MiB (spec: 9 ..= 21).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest virtual size we accept from a header: 64 TiB, far beyond a root
/// disk, and it keeps the in-memory L1 (8 MiB at 64 KiB clusters) bounded.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Longest backing file name the spec allows.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Header extensions we walk before giving up on an image.
pub const MAX_HEADER_EXTENSIONS: usize = 64;
/// Largest header length we accept (the spec's fields end at 112 bytes).
pub const MAX_HEADER_LENGTH: u32 = 4096;
/// Our overlays: 64 KiB clusters, 16-bit refcounts, the usual qemu layout.
pub const OVERLAY_CLUSTER_BITS: u32 = 16;
pub const OVERLAY_REFCOUNT_ORDER: u32 = 4;
/// Header length we write (v3 without the compression type field).
pub const OVERLAY_HEADER_LENGTH: u32 = 104;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a qcow2 image (magic 0x{found:08x})")]
    BadMagic { found: u32 },
    #[error("qcow2 version {version} is not supported (only 2 and 3)")]
    Version { version: u32 },
    #[error("qcow2 header is truncated ({len} bytes)")]
    Truncated { len: usize },
    #[error("qcow2 header field {field} = {value} is out of range")]
    Field { field: &'static str, value: u64 },
    #[error("qcow2 incompatible features 0x{bits:x} are not supported")]
    Incompatible { bits: u64 },
    #[error("qcow2 image is encrypted")]
    Encrypted,
    #[error("qcow2 header extension at byte {at} overruns the first cluster")]
    Extension { at: u64 },
    #[error("qcow2 L2 entry 0x{entry:016x} is invalid: {reason}")]
    L2Entry { entry: u64, reason: &'static str },
}

/// Compression algorithm of compressed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Deflate,
    Zstd,
}

/// The parsed header plus what the extensions told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression: Compression,
    /// From the backing format extension, when present.
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Whether L2 entries are extended (16 bytes, with subclusters).
    pub fn extended_l2(&self) -> bool {
        self.incompatible & INCOMPAT_EXTENDED_L2 != 0
    }
    /// Entries per L2 table (16-byte entries with extended L2).
    pub fn l2_entries(&self) -> u64 {
        let entry = if self.extended_l2() { 16 } else { 8 };
        self.cluster_size() / entry
    }
    /// L1 entries needed to map this image's size (extended L2 entries
    /// halve what one L2 table maps).
    pub fn l1_entries(&self) -> u64 {
        self.size.div_ceil(self.cluster_size() * self.l2_entries())
    }
    /// L1 entries needed to map `size` with standard (8-byte) L2 entries.
    pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
        let per_l2 = (1u64 << cluster_bits) * ((1u64 << cluster_bits) / 8);
        size.div_ceil(per_l2)
    }

    /// Parse the header from the start of the image (at least its first
    /// cluster, or the whole file when it is shorter). Incompatible features
    /// we cannot serve are refused here, whoever opens the image.
    pub fn parse(buf: &[u8]) -> Result<Header, FormatError> {
        if buf.len() < 72 {
            return Err(FormatError::Truncated { len: buf.len() });
        }
        let magic = be32(buf, 0);
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(FormatError::Version { version });
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(FormatError::Field { field: "cluster_bits", value: cluster_bits as u64 });
        }
        let size = be64(buf, 24);
        if size > MAX_VIRTUAL_SIZE {
            return Err(FormatError::Field { field: "size", value: size });
        }
        if be32(buf, 32) != 0 {
            return Err(FormatError::Encrypted);
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size,
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: 72,
            compression: Compression::Deflate,
            backing_format: None,
        };
        if h.backing_file_size > MAX_BACKING_NAME {
            return Err(FormatError::Field { field: "backing_file_size", value: h.backing_file_size as u64 });
        }
        if (h.l1_size as u64) < Header::l1_entries_for(size, cluster_bits) {
            return Err(FormatError::Field { field: "l1_size", value: h.l1_size as u64 });
        }
        if version == 3 {
            if buf.len() < 104 {
                return Err(FormatError::Truncated { len: buf.len() });
            }
            h.incompatible = be64(buf, 72);
            h.compatible = be64(buf, 80);
            h.autoclear = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 || h.header_length > MAX_HEADER_LENGTH || h.header_length as usize > buf.len() {
                return Err(FormatError::Field { field: "header_length", value: h.header_length as u64 });
            }
            if h.refcount_order > 6 {
                return Err(FormatError::Field { field: "refcount_order", value: h.refcount_order as u64 });
            }
            let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2;
            if h.incompatible & !known != 0 {
                return Err(FormatError::Incompatible { bits: h.incompatible & !known });
            }
            if h.extended_l2() && h.cluster_bits < MIN_EXTENDED_CLUSTER_BITS {
                return Err(FormatError::Field { field: "cluster_bits (extended L2)", value: h.cluster_bits as u64 });
            }
            if (h.l1_size as u64) < h.l1_entries() {
                return Err(FormatError::Field { field: "l1_size", value: h.l1_size as u64 });
            }
            if h.incompatible & INCOMPAT_COMPRESSION_TYPE != 0 {
                if h.header_length < 105 {
                    return Err(FormatError::Field { field: "header_length", value: h.header_length as u64 });
                }
                h.compression = match buf[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    other => return Err(FormatError::Field { field: "compression_type", value: other as u64 }),
                };
            }
        }
        h.parse_extensions(buf)?;
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8]) -> Result<(), FormatError> {
        let limit = buf.len().min(self.cluster_size() as usize);
        let mut at = self.header_length as usize;
        for _ in 0..MAX_HEADER_EXTENSIONS {
            if at + 8 > limit {
                // v2 images without extensions may end right after the header.
                return Ok(());
            }
            let typ = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            let data_end = at + 8 + len;
            if data_end > limit {
                return Err(FormatError::Extension { at: at as u64 });
            }
            match typ {
                EXT_END => return Ok(()),
                EXT_BACKING_FORMAT => {
                    self.backing_format = Some(String::from_utf8_lossy(&buf[at + 8..data_end]).into_owned());
                }
                _ => {}
            }
            at = at + 8 + len.div_ceil(8) * 8;
        }
        Err(FormatError::Extension { at: at as u64 })
    }

    /// The backing file name, read from where the header points.
    pub fn backing_name(&self, buf: &[u8]) -> Result<Option<String>, FormatError> {
        if self.backing_file_offset == 0 || self.backing_file_size == 0 {
            return Ok(None);
        }
        let start = self.backing_file_offset as usize;
        let end = start + self.backing_file_size as usize;
        if end > buf.len() {
            return Err(FormatError::Field { field: "backing_file_offset", value: self.backing_file_offset });
        }
        Ok(Some(String::from_utf8_lossy(&buf[start..end]).into_owned()))
    }
}

/// Where one guest cluster's data lives, decoded from an L2 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMap {
    /// Not in this image: read from the backing file (or zeros past it).
    Unallocated,
    /// Reads as zeros, no host cluster.
    Zero,
    /// Reads as zeros; `host` is preallocated and may be reused by a write.
    ZeroAlloc(u64),
    /// Data at `host`.
    Data(u64),
    /// Compressed data: `len` bytes starting at `host` (not cluster aligned).
    Compressed { host: u64, len: u64 },
}

/// Decode a standard (8-byte) L2 entry.
pub fn decode_l2(entry: u64, cluster_bits: u32, version: u32) -> Result<ClusterMap, FormatError> {
    if entry & OFLAG_COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry & !OFLAG_COPIED & !OFLAG_COMPRESSED) >> x) + 1;
        // The data runs from `host` to the end of the last 512-byte sector.
        let len = sectors * 512 - (host & 511);
        if len > (2u64 << cluster_bits) {
            return Err(FormatError::L2Entry { entry, reason: "compressed length exceeds two clusters" });
        }
        return Ok(ClusterMap::Compressed { host, len });
    }
    let host = entry & OFFSET_MASK;
    let zero = version >= 3 && entry & OFLAG_ZERO != 0;
    if host & ((1u64 << cluster_bits) - 1) != 0 {
        return Err(FormatError::L2Entry { entry, reason: "host offset not cluster aligned" });
    }
    Ok(match (host, zero) {
        (0, false) => ClusterMap::Unallocated,
        (0, true) => ClusterMap::Zero,
        (h, true) => ClusterMap::ZeroAlloc(h),
        (h, false) => ClusterMap::Data(h),
    })
}

/// Decode an extended (16-byte) L2 entry, `entry` then `bitmap`, into the
/// maps of the cluster's [`SUBCLUSTERS`] subclusters (`Data` hosts point at
/// each subcluster). Bitmap bits 0-31: the subcluster is allocated (data
/// at the cluster's host offset); bits 32-63: it reads as zeros; neither:
/// from the backing file. A compressed cluster is compressed whole, with a
/// bitmap of zero.
pub fn decode_extended_l2(entry: u64, bitmap: u64, cluster_bits: u32) -> Result<[ClusterMap; SUBCLUSTERS], FormatError> {
    if entry & OFLAG_COMPRESSED != 0 {
        if bitmap != 0 {
            return Err(FormatError::L2Entry { entry, reason: "a compressed cluster with a subcluster bitmap" });
        }
        return Ok([decode_l2(entry, cluster_bits, 3)?; SUBCLUSTERS]);
    }
    if entry & OFLAG_ZERO != 0 {
        return Err(FormatError::L2Entry { entry, reason: "bit 0 is reserved with extended L2 entries" });
    }
    let (alloc, zero) = (bitmap as u32, (bitmap >> 32) as u32);
    if alloc & zero != 0 {
        return Err(FormatError::L2Entry { entry, reason: "a subcluster both allocated and zero" });
    }
    let host = match decode_l2(entry, cluster_bits, 3)? {
        ClusterMap::Data(h) => Some(h),
        _ if alloc != 0 => return Err(FormatError::L2Entry { entry, reason: "allocated subclusters in a cluster with no host offset" }),
        _ => None,
    };
    let sub_bits = cluster_bits - SUBCLUSTER_SHIFT;
    let mut out = [ClusterMap::Unallocated; SUBCLUSTERS];
    for (i, m) in out.iter_mut().enumerate() {
        if alloc & (1 << i) != 0 {
            *m = ClusterMap::Data(host.unwrap_or_default() + ((i as u64) << sub_bits));
        } else if zero & (1 << i) != 0 {
            *m = ClusterMap::Zero;
        }
    }
    Ok(out)
}

/// Encode an L2 entry for a cluster of ours (refcount 1, so COPIED).
pub fn encode_l2(map: ClusterMap) -> u64 {
    match map {
        ClusterMap::Unallocated => 0,
        ClusterMap::Zero => OFLAG_ZERO,
        ClusterMap::ZeroAlloc(h) => h | OFLAG_COPIED | OFLAG_ZERO,
        ClusterMap::Data(h) => h | OFLAG_COPIED,
        // We never write compressed clusters.
        ClusterMap::Compressed { host, .. } => host | OFLAG_COMPRESSED,
    }
}

/// Where the metadata of a freshly created overlay sits, in clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayLayout {
    pub size: u64,
    pub refcount_table_cluster: u64,
    pub refcount_table_clusters: u64,
    pub first_refblock_cluster: u64,
    pub l1_cluster: u64,
    pub l1_entries: u64,
    pub l1_clusters: u64,
    /// First cluster free for L2 tables and data.
    pub first_free_cluster: u64,
}

pub const REFCOUNTS_PER_BLOCK: u64 = (1 << OVERLAY_CLUSTER_BITS) / 2;

impl OverlayLayout {
    /// Lay out a new overlay of `size` bytes. The refcount table is sized for
    /// twice the largest file the overlay can need, so it never moves.
    pub fn new(size: u64) -> OverlayLayout {
        let cs = 1u64 << OVERLAY_CLUSTER_BITS;
        let data_clusters = size.div_ceil(cs);
        let l1_entries = Header::l1_entries_for(size, OVERLAY_CLUSTER_BITS).max(1);
        let l1_clusters = (l1_entries * 8).div_ceil(cs);
        let max_clusters = 2 * (data_clusters + l1_entries + l1_clusters) + 1024;
        let refblocks = max_clusters.div_ceil(REFCOUNTS_PER_BLOCK);
        let refcount_table_clusters = (refblocks * 8).div_ceil(cs);
        OverlayLayout {
            size,
            refcount_table_cluster: 1,
            refcount_table_clusters,
            first_refblock_cluster: 1 + refcount_table_clusters,
            l1_cluster: 2 + refcount_table_clusters,
            l1_entries,
            l1_clusters,
            first_free_cluster: 2 + refcount_table_clusters + l1_clusters,
        }
    }

    /// Clusters the refcount table can describe: the overlay's size limit.
    pub fn max_clusters(&self) -> u64 {
        self.refcount_table_clusters * ((1 << OVERLAY_CLUSTER_BITS) / 8) * REFCOUNTS_PER_BLOCK
    }

    /// The first cluster: header, backing format extension, end marker and
    /// the backing file name.
    pub fn header_cluster(&self, backing: &str, backing_format: &str) -> Result<Vec<u8>, FormatError> {
        if backing.len() > MAX_BACKING_NAME as usize {
            return Err(FormatError::Field { field: "backing_file_size", value: backing.len() as u64 });
        }
        let cs = 1usize << OVERLAY_CLUSTER_BITS;
        let mut h = vec![0u8; cs];
        let put32 = |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 = |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut h, 0, MAGIC);
        put32(&mut h, 4, 3);
        put32(&mut h, 20, OVERLAY_CLUSTER_BITS);
        put64(&mut h, 24, self.size);
        put32(&mut h, 32, 0);
        put32(&mut h, 36, self.l1_entries as u32);
        put64(&mut h, 40, self.l1_cluster << OVERLAY_CLUSTER_BITS);
        put64(&mut h, 48, self.refcount_table_cluster << OVERLAY_CLUSTER_BITS);
        put32(&mut h, 56, self.refcount_table_clusters as u32);
        put32(&mut h, 60, 0);
        put64(&mut h, 64, 0);
        put64(&mut h, 72, 0);
        put64(&mut h, 80, 0);
        put64(&mut h, 88, 0);
        put32(&mut h, 96, OVERLAY_REFCOUNT_ORDER);
        put32(&mut h, 100, OVERLAY_HEADER_LENGTH);
        let mut at = OVERLAY_HEADER_LENGTH as usize;
        put32(&mut h, at, EXT_BACKING_FORMAT);
        put32(&mut h, at + 4, backing_format.len() as u32);
        h[at + 8..at + 8 + backing_format.len()].copy_from_slice(backing_format.as_bytes());
        at += 8 + backing_format.len().div_ceil(8) * 8;
        put32(&mut h, at, EXT_END);
        put32(&mut h, at + 4, 0);
        at += 8;
        put64(&mut h, 8, at as u64);
        put32(&mut h, 16, backing.len() as u32);
        h[at..at + backing.len()].copy_from_slice(backing.as_bytes());
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_header_cluster_parses_back() {
        let layout = OverlayLayout::new(10 << 30);
        let buf = layout.header_cluster("/srv/base.img", "raw").unwrap();
        let h = Header::parse(&buf).unwrap();
        assert_eq!(h.size, 10 << 30);
        assert_eq!(h.version, 3);
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        assert_eq!(h.backing_name(&buf).unwrap().as_deref(), Some("/srv/base.img"));
        assert_eq!(h.l1_size, 20);
        assert_eq!(h.refcount_table_offset, 1 << 16);
    }

    #[test]
    fn test_layout_refcount_table_covers_twice_the_disk() {
        let l = OverlayLayout::new(1 << 40);
        assert!(l.max_clusters() >= 2 * ((1u64 << 40) >> 16));
    }

    #[test]
    fn test_decode_l2_states() {
        assert_eq!(decode_l2(0, 16, 3).unwrap(), ClusterMap::Unallocated);
        assert_eq!(decode_l2(1, 16, 3).unwrap(), ClusterMap::Zero);
        assert_eq!(decode_l2(OFLAG_COPIED | 0x30000, 16, 3).unwrap(), ClusterMap::Data(0x30000));
        assert_eq!(decode_l2(OFLAG_COPIED | 0x30001, 16, 3).unwrap(), ClusterMap::ZeroAlloc(0x30000));
        assert!(decode_l2(OFLAG_COPIED | 0x30200, 16, 3).is_err());
        for m in [ClusterMap::Zero, ClusterMap::Data(1 << 20), ClusterMap::ZeroAlloc(1 << 20)] {
            assert_eq!(decode_l2(encode_l2(m), 16, 3).unwrap(), m);
        }
    }

    #[test]
    fn test_decode_l2_compressed() {
        // 64 KiB clusters: x = 54; 3 additional sectors, host 0x10100.
        let e = OFLAG_COMPRESSED | (3u64 << 54) | 0x10100;
        assert_eq!(decode_l2(e, 16, 3).unwrap(), ClusterMap::Compressed { host: 0x10100, len: 4 * 512 - 256 });
    }

    #[test]
    fn test_decode_extended_l2() {
        // 64 KiB clusters: 2 KiB subclusters.
        let host = OFLAG_COPIED | 0x30000;
        let m = decode_extended_l2(host, 0b101 | (0b10u64 << 32), 16).unwrap();
        assert_eq!(m[0], ClusterMap::Data(0x30000));
        assert_eq!(m[1], ClusterMap::Zero);
        assert_eq!(m[2], ClusterMap::Data(0x30000 + 2 * 2048));
        assert!(m[3..].iter().all(|x| *x == ClusterMap::Unallocated));
        // No host cluster: only zero and backing subclusters.
        let m = decode_extended_l2(0, 0xffff_ffffu64 << 32, 16).unwrap();
        assert!(m.iter().all(|x| *x == ClusterMap::Zero));
        assert!(decode_extended_l2(0, 1, 16).is_err(), "allocated without a host cluster");
        assert!(decode_extended_l2(host, 1 | (1u64 << 32), 16).is_err(), "allocated and zero");
        assert!(decode_extended_l2(host | 1, 1, 16).is_err(), "reserved bit 0");
        let c = OFLAG_COMPRESSED | (3u64 << 54) | 0x10100;
        assert!(decode_extended_l2(c, 0, 16).unwrap().iter().all(|x| *x == ClusterMap::Compressed { host: 0x10100, len: 4 * 512 - 256 }));
        assert!(decode_extended_l2(c, 1, 16).is_err());
    }

    #[test]
    fn test_header_rejects_garbage() {
        assert!(matches!(Header::parse(&[0u8; 200]), Err(FormatError::BadMagic { .. })));
        assert!(matches!(Header::parse(&[0u8; 10]), Err(FormatError::Truncated { .. })));
        let mut buf = OverlayLayout::new(1 << 20).header_cluster("b", "raw").unwrap();
        buf[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(Header::parse(&buf), Err(FormatError::Field { field: "cluster_bits", .. })));
        let mut buf = OverlayLayout::new(1 << 20).header_cluster("b", "raw").unwrap();
        buf[72..80].copy_from_slice(&INCOMPAT_EXTERNAL_DATA.to_be_bytes());
        assert!(matches!(Header::parse(&buf), Err(FormatError::Incompatible { .. })));
    }
}
