//! Partition tables, read-only and pure: bytes of the disk's start in,
//! partitions out: GPT (here) and MBR (`mbr`), and in `fsid`, filesystem
//! UUIDs and labels. pxeroot-init uses it to find the root partition when
//! no `pxeroot.partition` is given: by `root=PARTUUID=` (a GPT partition's
//! unique GUID, or an MBR disk's signature and partition number) or by the
//! Discoverable Partitions Specification's root type for this
//! architecture; pxeroot checks its images with it at start. The kernel
//! validates the table itself (checksums) when it makes the partition
//! devices; this reads only what picks one.
#![forbid(unsafe_code)]

pub mod fsid;
pub mod mbr;

use std::fmt;

/// The header's signature at the start of LBA 1.
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Sector sizes a GPT may be written for: the header is at LBA 1.
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];
/// Most partition entries read (the usual table has 128).
pub const MAX_ENTRIES: u32 = 1024;
/// Smallest and largest entry size accepted (the spec's is 128 << n).
pub const MIN_ENTRY_SIZE: u32 = 128;
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// The Discoverable Partitions Specification's root partition type for the
/// architecture pxeroot-init is built for.
#[cfg(target_arch = "aarch64")]
pub const ROOT_TYPE: Guid = Guid(*b"\x45\xb0\x21\xb9\xf0\x1d\xc3\x41\xaf\x44\x4c\x6f\x28\x0d\x3f\xae");
#[cfg(not(target_arch = "aarch64"))]
pub const ROOT_TYPE: Guid = Guid(*b"\xe3\xbc\x68\x4f\xcd\xe8\xb1\x4d\x96\xe7\xfb\xca\xf9\x84\xb7\x09");

/// A GUID as stored on disk (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where the partition entries are, from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The sector size the table is written for (its LBAs' unit).
    pub sector: u64,
    /// Byte offset of the first entry on the disk.
    pub entries_at: u64,
    pub count: u32,
    pub entry_size: u32,
}

impl Header {
    /// Bytes the entries take.
    pub fn entries_len(&self) -> usize {
        self.count as usize * self.entry_size as usize
    }
}

/// The table a partition is in, and what it says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Gpt {
        type_guid: Guid,
        unique: Guid,
    },
    /// `kind`: the entry's type byte; `signature`: the disk's.
    Mbr {
        kind: u8,
        signature: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers /dev/nbd0pN (MBR logical ones from 5).
    pub number: u32,
    pub scheme: Scheme,
    /// Byte offset of the partition's first sector on the disk.
    pub start: u64,
}

impl Partition {
    /// What the kernel matches `root=PARTUUID=` against: a GPT
    /// partition's unique GUID, an MBR partition's `SSSSSSSS-NN`.
    pub fn partuuid(&self) -> String {
        match self.scheme {
            Scheme::Gpt { unique, .. } => unique.to_string(),
            Scheme::Mbr { signature, .. } => mbr::partuuid(signature, self.number),
        }
    }

    /// "GPT" or "MBR".
    pub fn table(&self) -> &'static str {
        match self.scheme {
            Scheme::Gpt { .. } => "GPT",
            Scheme::Mbr { .. } => "MBR",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum GptError {
    EntryCount(u32),
    EntrySize(u32),
    Short { want: usize, have: usize },
}

impl std::error::Error for GptError {}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::EntryCount(n) => write!(f, "GPT header lists {n} partition entries, more than the {MAX_ENTRIES} read"),
            GptError::EntrySize(n) => {
                write!(f, "GPT header gives partition entries of {n} bytes, not {MIN_ENTRY_SIZE} to {MAX_ENTRY_SIZE} in steps of 128")
            }
            GptError::Short { want, have } => write!(f, "GPT entries need {want} bytes, {have} given"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The GPT header in `head` (the disk's first bytes, at least 8 KiB to
/// find one written for 4096-byte sectors). `Ok(None)`: no GPT there (a
/// disk that is one filesystem, or an MBR-only table).
pub fn header(head: &[u8]) -> Result<Option<Header>, GptError> {
    for sector in SECTOR_SIZES {
        let at = sector as usize;
        let Some(h) = head.get(at..at + 92) else { continue };
        if &h[..8] != SIGNATURE {
            continue;
        }
        let (lba, count, entry_size) = (u64_at(h, 72), u32_at(h, 80), u32_at(h, 84));
        if count > MAX_ENTRIES {
            return Err(GptError::EntryCount(count));
        }
        if !(MIN_ENTRY_SIZE..=MAX_ENTRY_SIZE).contains(&entry_size) || entry_size % 128 != 0 {
            return Err(GptError::EntrySize(entry_size));
        }
        return Ok(Some(Header { sector, entries_at: lba.saturating_mul(sector), count, entry_size }));
    }
    Ok(None)
}

/// The used partition entries in `entries` (the bytes at `h.entries_at`).
pub fn partitions(h: &Header, entries: &[u8]) -> Result<Vec<Partition>, GptError> {
    if entries.len() < h.entries_len() {
        return Err(GptError::Short { want: h.entries_len(), have: entries.len() });
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(h.entry_size as usize).take(h.count as usize).enumerate() {
        let mut t = [0u8; 16];
        t.copy_from_slice(&e[..16]);
        if t == [0; 16] {
            continue;
        }
        let mut u = [0u8; 16];
        u.copy_from_slice(&e[16..32]);
        let mut first = [0u8; 8];
        first.copy_from_slice(&e[32..40]);
        out.push(Partition {
            number: i as u32 + 1,
            scheme: Scheme::Gpt { type_guid: Guid(t), unique: Guid(u) },
            start: u64::from_le_bytes(first).saturating_mul(h.sector),
        });
    }
    Ok(out)
}

/// Bytes of a disk's start that hold its GPT header for either sector size
/// (and its MBR, the first 512).
pub const HEAD_BYTES: usize = 8192;

/// Read a disk's partition table through `read_at(buf, offset)`, which
/// fills `buf` with the disk's bytes at `offset`: a GPT, else an MBR with
/// its logical partitions. The outer error is the reader's; inside,
/// `Ok(None)` when the disk has neither. An extended boot record that
/// cannot be read ends its chain, as in the kernel.
pub fn read<E>(mut read_at: impl FnMut(&mut [u8], u64) -> Result<(), E>) -> Result<Result<Option<Vec<Partition>>, GptError>, E> {
    let mut head = vec![0u8; HEAD_BYTES];
    read_at(&mut head, 0)?;
    let h = match header(&head) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(Ok(read_mbr(&head, read_at))),
        Err(e) => return Ok(Err(e)),
    };
    let mut entries = vec![0u8; h.entries_len()];
    read_at(&mut entries, h.entries_at)?;
    Ok(partitions(&h, &entries).map(Some))
}

fn read_mbr<E>(head: &[u8], mut read_at: impl FnMut(&mut [u8], u64) -> Result<(), E>) -> Option<Vec<Partition>> {
    let (signature, table) = mbr::primary(head)?;
    let part =
        |number, kind, lba: u64| Partition { number, scheme: Scheme::Mbr { kind, signature }, start: lba.saturating_mul(mbr::SECTOR) };
    let mut out = Vec::new();
    for (i, e) in table.iter().enumerate() {
        if e.used() && !e.is_extended() {
            out.push(part(i as u32 + 1, e.kind, u64::from(e.lba)));
        }
    }
    let mut number = mbr::FIRST_LOGICAL;
    for ext in table.iter().filter(|e| e.used() && e.is_extended()) {
        let first = u64::from(ext.lba);
        let (mut at, mut extent) = (first, u64::from(ext.sectors));
        for _ in 0..mbr::MAX_EBRS {
            let mut sector = [0u8; mbr::SECTOR as usize];
            if read_at(&mut sector, at.saturating_mul(mbr::SECTOR)).is_err() {
                break;
            }
            let Some(mbr::Ebr { logical, next }) = mbr::ebr(&sector, extent) else { break };
            for (offset, _) in logical {
                out.push(part(number, ext.kind, at.saturating_add(offset)));
                number += 1;
            }
            let Some(next) = next else { break };
            (at, extent) = (first.saturating_add(u64::from(next.lba)), u64::from(next.sectors));
        }
    }
    Some(out)
}

/// The root partition among `parts`: the one whose PARTUUID is `partuuid`
/// (any case), else the first GPT partition of the root type. `None` if
/// `partuuid` matches none, or without it, if none has the root type.
pub fn pick_root<'a>(parts: &'a [Partition], partuuid: Option<&str>) -> Option<&'a Partition> {
    match partuuid {
        Some(want) => parts.iter().find(|p| p.partuuid().eq_ignore_ascii_case(want)),
        None => parts.iter().find(|p| matches!(p.scheme, Scheme::Gpt { type_guid, .. } if type_guid == ROOT_TYPE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk start with a GPT for `sector`-byte sectors: entries at LBA 2,
    /// `parts` as (type, unique) in slots 1, 2, ... (a zero type: unused).
    fn disk(sector: usize, parts: &[(Guid, Guid)]) -> Vec<u8> {
        let mut d = vec![0u8; sector * 2 + 128 * 128];
        let h = &mut d[sector..sector + 92];
        h[..8].copy_from_slice(SIGNATURE);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (t, u)) in parts.iter().enumerate() {
            let e = sector * 2 + i * 128;
            d[e..e + 16].copy_from_slice(&t.0);
            d[e + 16..e + 32].copy_from_slice(&u.0);
            d[e + 32..e + 40].copy_from_slice(&(2048 * (i as u64 + 1)).to_le_bytes());
        }
        d
    }

    const LINUX_DATA: Guid = Guid(*b"\xaf\x3d\xc6\x0f\x83\x84\x72\x47\x8e\x79\x3d\x69\xd8\x47\x7d\xe4");
    const UNIQUE: Guid = Guid(*b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10");

    #[test]
    fn test_guids_print_in_their_mixed_endian_text_form() {
        assert_eq!(LINUX_DATA.to_string(), "0fc63daf-8483-4772-8e79-3d69d8477de4");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(ROOT_TYPE.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert_eq!(UNIQUE.to_string(), "04030201-0605-0807-090a-0b0c0d0e0f10");
    }

    #[test]
    fn test_finds_the_root_by_type_or_by_partuuid_for_both_sector_sizes() {
        for sector in [512, 4096] {
            let d = disk(sector, &[(LINUX_DATA, Guid([7; 16])), (Guid([0; 16]), Guid([0; 16])), (ROOT_TYPE, UNIQUE)]);
            let h = header(&d).unwrap().unwrap();
            assert_eq!(h.entries_at, 2 * sector as u64);
            let parts = partitions(&h, &d[h.entries_at as usize..]).unwrap();
            assert_eq!(parts.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 3], "the unused slot is skipped, numbers kept");
            assert_eq!(parts[1].start, 3 * 2048 * sector as u64, "first LBA in the table's sector unit");
            assert_eq!(pick_root(&parts, None).map(|p| p.number), Some(3));
            assert_eq!(pick_root(&parts, Some("07070707-0707-0707-0707-070707070707")).map(|p| p.number), Some(1));
            assert_eq!(pick_root(&parts, Some("04030201-0605-0807-090A-0B0C0D0E0F10")).map(|p| p.number), Some(3));
            assert_eq!(pick_root(&parts, Some("00000000-0000-0000-0000-000000000001")), None);
        }
        // Without the root type and without a PARTUUID: no pick.
        let d = disk(512, &[(LINUX_DATA, UNIQUE)]);
        let h = header(&d).unwrap().unwrap();
        assert_eq!(pick_root(&partitions(&h, &d[1024..]).unwrap(), None), None);
    }

    #[test]
    fn test_read_goes_through_the_reader() {
        let d = disk(512, &[(ROOT_TYPE, UNIQUE)]);
        let mut offsets = Vec::new();
        let parts = read(|buf: &mut [u8], off: u64| -> Result<(), ()> {
            offsets.push((off, buf.len()));
            let at = off as usize;
            buf.copy_from_slice(&d[at..at + buf.len()]);
            Ok(())
        })
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(offsets, [(0, HEAD_BYTES), (1024, 16384)]);
        let none = read(|buf: &mut [u8], _| -> Result<(), ()> {
            buf.fill(0);
            Ok(())
        });
        assert_eq!(none, Ok(Ok(None)));
        assert_eq!(read(|_: &mut [u8], _| Err("io")), Err("io"));
    }

    /// Damaged tables never panic: a valid disk start with bytes changed
    /// at random (a fixed seed) in its header and entries, read through a
    /// reader that zero-fills what lies past the bytes it has.
    #[test]
    fn test_damaged_tables_give_errors_or_partitions_never_a_panic() {
        let good = disk(512, &[(LINUX_DATA, UNIQUE), (ROOT_TYPE, UNIQUE)]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let mut d = good.clone();
            for _ in 0..1 + next() % 8 {
                let at = if next() % 2 == 0 { 512 + (next() % 92) as usize } else { (next() % d.len() as u64) as usize };
                d[at] = next() as u8;
            }
            let _ = read(|buf: &mut [u8], off: u64| -> Result<(), ()> {
                buf.fill(0);
                let start = (off as usize).min(d.len());
                let n = (d.len() - start).min(buf.len());
                buf[..n].copy_from_slice(&d[start..start + n]);
                Ok(())
            });
        }
    }

    /// An MBR disk as bytes: sector 0 with `signature` and `primary`, and
    /// more sectors `(lba, entries)` (extended boot records).
    /// Entries as (type, first sector, sectors).
    type Entries<'a> = &'a [(u8, u32, u32)];

    fn mbr_disk(signature: u32, primary: Entries, ebrs: &[(u32, Entries)]) -> Vec<u8> {
        let mut d = vec![0u8; 64 * 1024];
        d[..512].copy_from_slice(&mbr::tests::sector(signature, primary));
        for (lba, entries) in ebrs {
            let at = *lba as usize * 512;
            d[at..at + 512].copy_from_slice(&mbr::tests::sector(0, entries));
        }
        d
    }

    fn read_bytes(d: &[u8]) -> Option<Vec<Partition>> {
        read(|buf: &mut [u8], off: u64| -> Result<(), ()> {
            let at = usize::try_from(off).map_err(|_| ())?;
            buf.copy_from_slice(d.get(at..at + buf.len()).ok_or(())?);
            Ok(())
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn test_mbr_primary_and_logical_partitions_as_the_kernel_numbers_them() {
        // 1: Linux; 2: extended (sectors 40-119) holding two logical
        // partitions in a chain of two EBRs; 4: another Linux one.
        let d = mbr_disk(
            0xdead_beef,
            &[(0x83, 2, 10), (0x05, 40, 80), (0, 0, 0), (0x83, 20, 10)],
            &[(40, &[(0x83, 2, 10), (0x05, 20, 40)]), (60, &[(0x83, 4, 10)])],
        );
        let parts = read_bytes(&d).unwrap();
        let got: Vec<(u32, u64, String)> = parts.iter().map(|p| (p.number, p.start / 512, p.partuuid())).collect();
        assert_eq!(
            got,
            [(1, 2, "deadbeef-01".into()), (4, 20, "deadbeef-04".into()), (5, 42, "deadbeef-05".into()), (6, 64, "deadbeef-06".into())]
        );
        assert!(parts.iter().all(|p| p.table() == "MBR"));
        assert_eq!(pick_root(&parts, Some("DEADBEEF-06")).map(|p| p.number), Some(6));
        assert_eq!(pick_root(&parts, None), None, "MBR has no root type");
        // A chain that points back at itself ends at the bound; one past
        // the disk's end ends where the read fails.
        let looped = mbr_disk(1, &[(0x05, 40, 80)], &[(40, &[(0x83, 2, 10), (0x05, 0, 80)])]);
        assert_eq!(read_bytes(&looped).unwrap().len(), mbr::MAX_EBRS as usize);
        let past = mbr_disk(1, &[(0x83, 2, 10), (0x0f, 1 << 30, 80)], &[]);
        assert_eq!(read_bytes(&past).unwrap().len(), 1);
        // A GPT's protective MBR is not read as MBR: the GPT is.
        let gpt = disk(512, &[(ROOT_TYPE, UNIQUE)]);
        assert_eq!(read_bytes(&gpt).unwrap()[0].table(), "GPT");
    }

    /// Damaged MBR tables and chains never panic either.
    #[test]
    fn test_damaged_mbr_never_panics() {
        let good = mbr_disk(7, &[(0x83, 2, 10), (0x05, 40, 80)], &[(40, &[(0x83, 2, 10), (0x05, 20, 40)]), (60, &[(0x83, 4, 10)])]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let mut d = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = [446, 40 * 512 + 446, 60 * 512 + 446][(seed % 3) as usize] + (seed >> 8) as usize % 66;
                d[at] = (seed >> 32) as u8;
            }
            let _ = read_bytes(&d);
        }
    }

    #[test]
    fn test_no_gpt_and_bad_headers() {
        // An ext4 image starts with zeros: no GPT.
        assert_eq!(header(&vec![0u8; 8192]).unwrap(), None);
        assert_eq!(header(&[0u8; 100]).unwrap(), None, "too short to hold a header");
        let mut d = disk(512, &[]);
        d[512 + 80..512 + 84].copy_from_slice(&(MAX_ENTRIES + 1).to_le_bytes());
        assert_eq!(header(&d).unwrap_err(), GptError::EntryCount(MAX_ENTRIES + 1));
        let mut d = disk(512, &[]);
        d[512 + 84..512 + 88].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(header(&d).unwrap_err(), GptError::EntrySize(100));
        let h = Header { sector: 512, entries_at: 1024, count: 128, entry_size: 128 };
        assert_eq!(partitions(&h, &[0u8; 128]).unwrap_err(), GptError::Short { want: 16384, have: 128 });
    }
}
