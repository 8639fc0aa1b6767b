//! Filesystem identifiers from superblocks, for `root=UUID=` and
//! `root=LABEL=`: ext2/3/4, XFS and btrfs, the root filesystems
//! pxeroot-init can carry modules for. Pure: the filesystem's first bytes
//! in, its UUID and label out (as `blkid` prints them).

/// Bytes from a filesystem's start that hold every superblock read here
/// (btrfs's is at 64 KiB).
pub const SUPERBLOCK_BYTES: usize = BTRFS_SB + 0x12b + BTRFS_LABEL;

const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xef53;
const XFS_MAGIC: &[u8; 4] = b"XFSB";
const XFS_LABEL: usize = 12;
const BTRFS_SB: usize = 65536;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";
const BTRFS_LABEL: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsId {
    /// "ext4" (for ext2/3/4), "xfs" or "btrfs".
    pub kind: &'static str,
    /// 8-4-4-4-12 lowercase hex, the bytes in order.
    pub uuid: String,
    pub label: String,
}

fn uuid_text(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", hex[..4].concat(), hex[4..6].concat(), hex[6..8].concat(), hex[8..10].concat(), hex[10..16].concat())
}

fn label_text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The filesystem whose first bytes are `head` (up to SUPERBLOCK_BYTES;
/// fewer find only the superblocks they hold), if it is one of these.
pub fn identify(head: &[u8]) -> Option<FsId> {
    if let Some(sb) = head.get(EXT_SB..EXT_SB + 0x88) {
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) == EXT_MAGIC {
            return Some(FsId { kind: "ext4", uuid: uuid_text(&sb[0x68..0x78]), label: label_text(&sb[0x78..0x88]) });
        }
    }
    if let Some(sb) = head.get(..108 + XFS_LABEL) {
        if &sb[..4] == XFS_MAGIC {
            return Some(FsId { kind: "xfs", uuid: uuid_text(&sb[32..48]), label: label_text(&sb[108..108 + XFS_LABEL]) });
        }
    }
    if let Some(sb) = head.get(BTRFS_SB..BTRFS_SB + 0x12b + BTRFS_LABEL) {
        if &sb[0x40..0x48] == BTRFS_MAGIC {
            return Some(FsId { kind: "btrfs", uuid: uuid_text(&sb[0x20..0x30]), label: label_text(&sb[0x12b..0x12b + BTRFS_LABEL]) });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [0x6b, 0x2c, 0x1a, 0x4e, 0x0d, 0x5f, 0x4c, 0x7a, 0x9e, 0x21, 0x3f, 0x8b, 0x5c, 0x6d, 0x7e, 0x01];
    const ID_TEXT: &str = "6b2c1a4e-0d5f-4c7a-9e21-3f8b5c6d7e01";

    #[test]
    fn test_ext_xfs_and_btrfs_superblocks() {
        let mut ext = vec![0u8; 4096];
        ext[EXT_SB + 0x38..EXT_SB + 0x3a].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        ext[EXT_SB + 0x68..EXT_SB + 0x78].copy_from_slice(&ID);
        ext[EXT_SB + 0x78..EXT_SB + 0x7e].copy_from_slice(b"rootfs");
        assert_eq!(identify(&ext), Some(FsId { kind: "ext4", uuid: ID_TEXT.into(), label: "rootfs".into() }));

        let mut xfs = vec![0u8; 4096];
        xfs[..4].copy_from_slice(XFS_MAGIC);
        xfs[32..48].copy_from_slice(&ID);
        xfs[108..108 + XFS_LABEL].copy_from_slice(b"twelve-chars");
        assert_eq!(identify(&xfs), Some(FsId { kind: "xfs", uuid: ID_TEXT.into(), label: "twelve-chars".into() }));

        let mut btrfs = vec![0u8; SUPERBLOCK_BYTES];
        btrfs[BTRFS_SB + 0x40..BTRFS_SB + 0x48].copy_from_slice(BTRFS_MAGIC);
        btrfs[BTRFS_SB + 0x20..BTRFS_SB + 0x30].copy_from_slice(&ID);
        btrfs[BTRFS_SB + 0x12b..BTRFS_SB + 0x12f].copy_from_slice(b"data");
        assert_eq!(identify(&btrfs), Some(FsId { kind: "btrfs", uuid: ID_TEXT.into(), label: "data".into() }));
        // Too short to reach btrfs's superblock: not found, no panic.
        assert_eq!(identify(&btrfs[..BTRFS_SB]), None);
    }

    #[test]
    fn test_no_filesystem_and_short_input() {
        assert_eq!(identify(&vec![0u8; SUPERBLOCK_BYTES]), None);
        assert_eq!(identify(&[]), None);
        assert_eq!(identify(&[0xffu8; 2000]), None);
    }
}
