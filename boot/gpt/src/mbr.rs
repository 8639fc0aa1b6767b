//! MBR (DOS) partition tables, read as the kernel's msdos parser reads them
//! (block/partitions/msdos.c): four primary entries in sector 0, logical
//! partitions in a chain of extended boot records numbered from 5, and the
//! kernel's PARTUUID for them, `SSSSSSSS-NN` (the disk signature and the
//! partition number in hex). Pure: sectors in, entries out.

/// MBR tables count in 512-byte sectors here: the NBD device has 512-byte
/// logical blocks, which the kernel's parser uses as the unit.
pub const SECTOR: u64 = 512;
/// Most extended boot records followed in one chain (the kernel's own
/// bound, against a chain that loops).
pub const MAX_EBRS: u32 = 100;
/// The first logical partition's number.
pub const FIRST_LOGICAL: u32 = 5;

const SIGNATURE_AT: usize = 440;
const ENTRIES_AT: usize = 446;
const ENTRY_LEN: usize = 16;
const MAGIC_AT: usize = 510;
/// The protective MBR's entry type: the disk is GPT, not MBR.
const GPT_PROTECTIVE: u8 = 0xee;

/// One of a sector's four entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: u8,
    /// First sector, relative to what the table's place makes it relative to.
    pub lba: u32,
    pub sectors: u32,
}

impl Entry {
    /// DOS, Windows (LBA) and Linux extended partitions.
    pub fn is_extended(&self) -> bool {
        matches!(self.kind, 0x05 | 0x0f | 0x85)
    }

    /// An entry with sectors; the kernel skips the others.
    pub fn used(&self) -> bool {
        self.sectors != 0
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn entries(sector: &[u8]) -> Option<[Entry; 4]> {
    if sector.get(MAGIC_AT..MAGIC_AT + 2)? != [0x55, 0xaa] {
        return None;
    }
    let mut out = [Entry { kind: 0, lba: 0, sectors: 0 }; 4];
    for (i, e) in out.iter_mut().enumerate() {
        let raw = &sector[ENTRIES_AT + i * ENTRY_LEN..ENTRIES_AT + (i + 1) * ENTRY_LEN];
        *e = Entry { kind: raw[4], lba: u32_at(raw, 8), sectors: u32_at(raw, 12) };
    }
    Some(out)
}

/// The disk signature and primary entries of sector 0, if it holds an MBR
/// partition table: the 55 AA mark, every boot indicator 0 or 0x80 (else
/// it is a FAT boot sector), and no GPT protective entry.
pub fn primary(sector0: &[u8]) -> Option<(u32, [Entry; 4])> {
    let table = entries(sector0)?;
    for i in 0..4 {
        if !matches!(sector0[ENTRIES_AT + i * ENTRY_LEN], 0x00 | 0x80) {
            return None;
        }
    }
    if table.iter().any(|e| e.kind == GPT_PROTECTIVE) {
        return None;
    }
    Some((u32_at(sector0, SIGNATURE_AT), table))
}

/// What one extended boot record holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Ebr {
    /// Logical partitions: sector offset from the EBR, and size.
    pub logical: Vec<(u64, u64)>,
    /// The next EBR's entry, its `lba` an offset from the extended
    /// partition's start.
    pub next: Option<Entry>,
}

/// One extended boot record, `this_sectors` its extent. Entries 3 and 4
/// count only when they fit that extent, as the kernel checks (they often
/// hold garbage). `None`: no 55 AA mark, the chain ends.
pub fn ebr(sector: &[u8], this_sectors: u64) -> Option<Ebr> {
    let table = entries(sector)?;
    let mut logical = Vec::new();
    for (i, e) in table.iter().enumerate() {
        if !e.used() || e.is_extended() {
            continue;
        }
        if i >= 2 && u64::from(e.lba) + u64::from(e.sectors) > this_sectors {
            continue;
        }
        logical.push((u64::from(e.lba), u64::from(e.sectors)));
    }
    let next = table.iter().find(|e| e.used() && e.is_extended()).copied();
    Some(Ebr { logical, next })
}

/// The kernel's PARTUUID of MBR partition `number` on a disk with
/// `signature`.
pub fn partuuid(signature: u32, number: u32) -> String {
    format!("{signature:08x}-{number:02x}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sector(signature: u32, table: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[SIGNATURE_AT..SIGNATURE_AT + 4].copy_from_slice(&signature.to_le_bytes());
        for (i, (kind, lba, sectors)) in table.iter().enumerate() {
            let e = ENTRIES_AT + i * ENTRY_LEN;
            s[e + 4] = *kind;
            s[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            s[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        }
        s[MAGIC_AT] = 0x55;
        s[MAGIC_AT + 1] = 0xaa;
        s
    }

    #[test]
    fn test_primary_tables_and_what_is_not_one() {
        let s = sector(0x1234_abcd, &[(0x83, 2048, 1000), (0, 0, 0), (0x05, 4096, 9000)]);
        let (sig, t) = primary(&s).unwrap();
        assert_eq!(sig, 0x1234_abcd);
        assert_eq!(t[0], Entry { kind: 0x83, lba: 2048, sectors: 1000 });
        assert!(t[2].is_extended() && !t[0].is_extended());
        assert_eq!(partuuid(sig, 1), "1234abcd-01");
        assert_eq!(partuuid(0xab, 12), "000000ab-0c");
        // No 55 AA: a filesystem's first sector (ext4's is zeros).
        assert_eq!(primary(&[0u8; 512]), None);
        assert_eq!(primary(&s[..300]), None, "too short");
        // A FAT boot sector: 55 AA, but its "boot indicators" are code.
        let mut fat = s.clone();
        fat[ENTRIES_AT] = 0x4e;
        assert_eq!(primary(&fat), None);
        // A GPT's protective MBR.
        assert_eq!(primary(&sector(1, &[(0xee, 1, 100)])), None);
    }

    #[test]
    fn test_ebr_logical_and_next() {
        let s = sector(0, &[(0x83, 63, 1000), (0x05, 2048, 4000), (0x83, 10, 5000)]);
        // The third entry runs past this EBR's extent: garbage, skipped.
        let next = Some(Entry { kind: 0x05, lba: 2048, sectors: 4000 });
        assert_eq!(ebr(&s, 2000), Some(Ebr { logical: vec![(63, 1000)], next }));
        assert_eq!(ebr(&s, 6000), Some(Ebr { logical: vec![(63, 1000), (10, 5000)], next }));
        assert_eq!(ebr(&sector(0, &[(0x83, 63, 1000)]), 2000), Some(Ebr { logical: vec![(63, 1000)], next: None }));
        assert_eq!(ebr(&[0u8; 512], 2000), None);
    }
}
