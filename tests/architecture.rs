//! The invariants of ARCHITECTURE.md that the source text itself can show:
//! the pure modules (codecs and decisions) touch no socket, file, process
//! or clock; only the services' shells own sockets; `unsafe` appears only
//! in pxeroot-init's `sys` module (the compiler enforces it too: see the
//! crates' `forbid`/`deny(unsafe_code)`). Test code (after `#[cfg(test)]`)
//! is not held to it.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Codecs and decisions: state in as arguments, results out.
const PURE: &[&str] = &[
    "src/dhcp/decide.rs",
    "src/dhcp/full.rs",
    "src/dhcp/leases.rs",
    "src/nbd/negotiate.rs",
    "src/nbd/validate.rs",
    "src/storage/qcow2.rs",
    "src/storage/catalogue.rs",
    "src/ipxe.rs",
    "src/tftp/packet.rs",
    "boot/nbd-wire/src",
    "boot/boot-limits/src",
    "boot/gpt/src",
    "boot/modlist/src",
    "boot/pxeroot-init/src/lib.rs",
    "boot/pxeroot-init/src/cmdline.rs",
    "boot/pxeroot-init/src/dhcp.rs",
    "boot/pxeroot-init/src/lease.rs",
    "boot/pxeroot-init/src/handoff.rs",
    "boot/pxeroot-init/src/netlink.rs",
    "boot/pxeroot-init/src/tcpstate.rs",
];

/// What a pure module must not name.
const IO: &[&str] = &[
    "std::fs",
    "File::",
    "OpenOptions",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "tokio::",
    "Instant::now",
    "SystemTime::now",
    "std::process",
    "std::env",
];

/// The shells that own the server's sockets (one per service).
const SOCKET_OWNERS: &[&str] = &["src/nbd/mod.rs", "src/dhcp/mod.rs", "src/tftp/mod.rs", "src/http.rs", "src/ra.rs"];

fn rust_files(rel: &str) -> Vec<PathBuf> {
    let p = Path::new(ROOT).join(rel);
    if p.is_file() {
        return vec![p];
    }
    let mut out = Vec::new();
    let mut dirs = vec![p];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The file's code before its tests, comment lines dropped.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let body = text.split("#[cfg(test)]").next().unwrap_or_default();
    body.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn relative(p: &Path) -> String {
    p.strip_prefix(ROOT).unwrap_or(p).display().to_string()
}

#[test]
fn test_pure_modules_touch_no_socket_file_process_or_clock() {
    let mut found = Vec::new();
    for rel in PURE {
        let files = rust_files(rel);
        assert!(!files.is_empty(), "{rel}: no such module (update the list)");
        for f in files {
            let text = code(&f);
            found.extend(IO.iter().filter(|w| text.contains(*w)).map(|w| format!("{} names {w}", relative(&f))));
        }
    }
    assert!(found.is_empty(), "pure modules doing I/O:\n{}", found.join("\n"));
}

#[test]
fn test_only_the_service_shells_own_sockets() {
    let owners: Vec<PathBuf> = SOCKET_OWNERS.iter().map(|r| Path::new(ROOT).join(r)).collect();
    let strays: Vec<String> = rust_files("src")
        .into_iter()
        .filter(|f| !owners.contains(f))
        .filter(|f| ["UdpSocket", "TcpListener", "TcpStream", "tokio::net"].iter().any(|w| code(f).contains(w)))
        .map(|f| relative(&f))
        .collect();
    assert!(strays.is_empty(), "sockets outside the service shells {SOCKET_OWNERS:?}: {strays:?}");
}

#[test]
fn test_unsafe_only_in_pxeroot_inits_sys_module() {
    let allowed = Path::new(ROOT).join("boot/pxeroot-init/src/sys.rs");
    let mut strays = Vec::new();
    for dir in ["src", "boot/nbd-wire/src", "boot/boot-limits/src", "boot/gpt/src", "boot/modlist/src", "boot/pxeroot-init/src"] {
        for f in rust_files(dir) {
            let text = std::fs::read_to_string(&f).unwrap();
            let uses = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains("unsafe {") || l.contains("unsafe fn") || l.contains("unsafe impl") || l.contains("unsafe extern"));
            if uses && f != allowed {
                strays.push(relative(&f));
            }
        }
    }
    assert!(strays.is_empty(), "unsafe outside boot/pxeroot-init/src/sys.rs: {strays:?}");
}
