//! A newc ("070701") cpio writer, the format the kernel unpacks an
//! initramfs from. Deterministic: inode numbers count up from 1, every
//! timestamp is 0, every owner root.

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A character or block device node (`kind` is S_IFCHR or S_IFBLK).
    Node {
        path: String,
        kind: u32,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let fields = [ino, mode, 0, 0, 1, 0, size as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// Write the archive: every entry, then the trailer. Paths are written
/// without a leading slash, as `cpio -o` does.
pub fn write(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let name = |p: &str| p.trim_start_matches('/').to_string();
        match e {
            Entry::Dir { path, mode } => header(&mut out, ino, S_IFDIR | mode, 0, (0, 0), &name(path)),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, S_IFREG | mode, data.len(), (0, 0), &name(path));
                out.extend_from_slice(data);
                pad4(&mut out);
            }
            Entry::Symlink { path, target } => {
                header(&mut out, ino, S_IFLNK | 0o777, target.len(), (0, 0), &name(path));
                out.extend_from_slice(target.as_bytes());
                pad4(&mut out);
            }
            Entry::Node { path, kind, mode, major, minor } => header(&mut out, ino, kind | mode, 0, (*major, *minor), &name(path)),
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpio_layout_is_aligned_and_ends_with_trailer() {
        let a = write(&[
            Entry::Dir { path: "/dev".into(), mode: 0o755 },
            Entry::File { path: "/init".into(), mode: 0o755, data: b"abcde".to_vec() },
            Entry::Node { path: "/dev/console".into(), kind: S_IFCHR, mode: 0o600, major: 5, minor: 1 },
        ]);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 4, 0);
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("init\0") && s.contains("abcde") && s.contains("TRAILER!!!"));
        // Same input, same bytes.
        assert_eq!(
            a,
            write(&[
                Entry::Dir { path: "/dev".into(), mode: 0o755 },
                Entry::File { path: "/init".into(), mode: 0o755, data: b"abcde".to_vec() },
                Entry::Node { path: "/dev/console".into(), kind: S_IFCHR, mode: 0o600, major: 5, minor: 1 },
            ])
        );
    }
}
