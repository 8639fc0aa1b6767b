//! The module list pxeroot-init loads at boot, `/etc/pxeroot/modules`:
//! written by `pxeroot initramfs`, read by pxeroot-init. Sans-IO: text in,
//! text out, and the decision which group to load.
//!
//! The list is a sequence of groups, each a header line and the modules it
//! loads in order, one `path [param=value ...]` per line:
//!
//! ```text
//! group always
//! /lib/modules/6.1.0/kernel/drivers/block/nbd.ko nbds_max=1
//! group pci:v00001AF4d*sv*sd*bc*sc*i*
//! /lib/modules/6.1.0/kernel/drivers/virtio/virtio_pci.ko
//! ```
//!
//! `group always` loads unconditionally; `group PATTERN...` loads when one
//! of the machine's device modaliases (`/sys/bus/*/devices/*/modalias`)
//! matches one of the patterns (the module aliases of the group's driver,
//! shell globs as modprobe matches them). Within a group the modules are
//! in dependency order; groups are independent of each other, so
//! pxeroot-init may load several `always` groups at once. A module path may
//! appear in several groups; it is loaded once, and a group that needs a
//! module another group is loading waits for it. Lines before the first
//! header belong to an `always` group, so a plain list of paths is a valid
//! list.
//!
//! A `?` before a path ([`OPTIONAL`]) marks a module only soft
//! dependencies brought in (`softdep` in modules.softdep or `.modinfo`):
//! as modprobe does, pxeroot-init says it failed and goes on without it
//! (a CPU-specific module refused with ENODEV must not stop the boot).
//! The rest of its group still loads.
#![forbid(unsafe_code)]

use std::fmt::Write;

/// Where the list lives in the initramfs.
pub const PATH: &str = "/etc/pxeroot/modules";

/// Longest list pxeroot-init reads: real ones are tens of KiB (mostly NIC
/// PCI ids).
pub const MAX_LIST_BYTES: usize = 1 << 20;

/// Marks a module whose failure to load is not fatal.
pub const OPTIONAL: char = '?';

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    /// Parameters as `finit_module` takes them: `key=value` words.
    pub params: Vec<String>,
    /// Only soft dependencies need it: a failure to load it is reported,
    /// not fatal.
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Modalias patterns; empty: always load.
    pub when: Vec<String>,
    pub modules: Vec<Module>,
}

/// Written by hand rather than with thiserror: pxeroot-init, which reads
/// the list, keeps its dependencies to libc and the NBD codec.
#[derive(Debug)]
pub enum ListError {
    TooLong { bytes: usize },
    EmptyGroup { line: usize },
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListError::TooLong { bytes } => write!(f, "module list is {bytes} bytes, more than the {MAX_LIST_BYTES} read"),
            ListError::EmptyGroup { line } => write!(f, "module list line {line}: `group` needs `always` or patterns"),
        }
    }
}

impl std::error::Error for ListError {}

pub fn render(groups: &[Group]) -> String {
    let mut out = String::from("# pxeroot-init module list: see the modlist crate\n");
    for g in groups {
        if g.when.is_empty() {
            out.push_str("group always\n");
        } else {
            let _ = writeln!(out, "group {}", g.when.join(" "));
        }
        for m in &g.modules {
            if m.optional {
                out.push(OPTIONAL);
            }
            out.push_str(&m.path);
            for p in &m.params {
                out.push(' ');
                out.push_str(p);
            }
            out.push('\n');
        }
    }
    out
}

pub fn parse(text: &str) -> Result<Vec<Group>, ListError> {
    if text.len() > MAX_LIST_BYTES {
        return Err(ListError::TooLong { bytes: text.len() });
    }
    let mut groups: Vec<Group> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first == "group" {
            let when: Vec<String> = words.map(str::to_string).collect();
            if when.is_empty() {
                return Err(ListError::EmptyGroup { line: i + 1 });
            }
            let when = if when == ["always"] { Vec::new() } else { when };
            groups.push(Group { when, modules: Vec::new() });
            continue;
        }
        if groups.is_empty() {
            groups.push(Group { when: Vec::new(), modules: Vec::new() });
        }
        if let Some(g) = groups.last_mut() {
            let (path, optional) = match first.strip_prefix(OPTIONAL) {
                Some(p) => (p, true),
                None => (first, false),
            };
            g.modules.push(Module { path: path.to_string(), params: words.map(str::to_string).collect(), optional });
        }
    }
    Ok(groups)
}

/// File name endings of kernel modules, compressed or not.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"];

/// Module name from its path, as `modname.param=` on the kernel command
/// line and modules.dep spell it: file stem, `-` as `_`. `None` for a file
/// that is not a module.
pub fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = MODULE_SUFFIXES.iter().find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// A module's parameters: the list's, each overridden (or added) by
/// `module.param=value` words of the kernel command line, as modprobe does.
pub fn params_for(module: &Module, cmdline: &str) -> String {
    let name = module_name(&module.path);
    let mut params: Vec<(String, String)> = module
        .params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.clone(), String::new()),
        })
        .collect();
    for word in cmdline.split_whitespace() {
        let Some((m, rest)) = word.split_once('.') else { continue };
        if Some(m.replace('-', "_")) != name {
            continue;
        }
        let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
        match params.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v.to_string(),
            None => params.push((k.to_string(), v.to_string())),
        }
    }
    params.iter().map(|(k, v)| if v.is_empty() { k.clone() } else { format!("{k}={v}") }).collect::<Vec<_>>().join(" ")
}

/// Does a device with one of `modaliases` need this group?
pub fn wanted(group: &Group, modaliases: &[String]) -> bool {
    group.when.is_empty() || group.when.iter().any(|p| modaliases.iter().any(|a| glob(p.as_bytes(), a.as_bytes())))
}

/// Alias prefixes that are not (only) the name of the bus whose devices
/// carry them: `of:` and `acpi:` aliases match platform devices too.
const NOT_ONE_BUS: &[&str] = &["of", "acpi", "dmi"];

/// The buses whose devices the groups' patterns can match: the part of
/// each pattern before its first `:` (`pci:v00008086d*` → `pci`), which
/// names the bus's directory under `/sys/bus`. `None` when some pattern's
/// bus cannot be told this way (no `:`, a glob in the prefix, or an
/// `of:`/`acpi:` alias): then every bus must be read. Reading only pci and
/// virtio instead of every bus saved 40 ms of a TCG boot.
pub fn buses(groups: &[Group]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for p in groups.iter().flat_map(|g| &g.when) {
        let (bus, _) = p.split_once(':')?;
        if bus.is_empty() || NOT_ONE_BUS.contains(&bus) || bus.bytes().any(|c| matches!(c, b'*' | b'?' | b'[' | b'/')) {
            return None;
        }
        if !out.iter().any(|b| b == bus) {
            out.push(bus.to_string());
        }
    }
    Some(out)
}

/// Shell glob as module aliases use it (fnmatch without flags): `*`, `?`
/// and `[...]` classes with ranges and `!`/`^` negation.
pub fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Backtracking point for the last `*`: (pattern after it, text position).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pat.get(p) {
            Some(b'*') => {
                star = Some((p + 1, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pat, p, s[i]),
            Some(&c) if c == s[i] => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(np), _) => {
                p = np;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Match `c` against the class starting at `pat[open] == b'['`: the pattern
/// position after the class if it matches. An unclosed `[` is a literal.
fn class(pat: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut j = open + 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    // A `]` right after `[` or `[!` is a member, not the end.
    let body = j;
    let Some(close) = pat.iter().skip(body + 1).position(|&b| b == b']').map(|k| k + body + 1) else {
        return (c == b'[').then_some(open + 1);
    };
    let mut hit = false;
    while j < close {
        if j + 2 < close && pat[j + 1] == b'-' {
            hit |= pat[j] <= c && c <= pat[j + 2];
            j += 3;
        } else {
            hit |= pat[j] == c;
            j += 1;
        }
    }
    (hit != negate).then_some(close + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_module_aliases_use_them() {
        let pci = b"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00";
        assert!(glob(b"pci:v00001AF4d*sv*sd*bc*sc*i*", pci));
        assert!(!glob(b"pci:v00008086d0000100Esv*sd*bc*sc*i*", pci));
        assert!(glob(b"virtio:d00000001v*", b"virtio:d00000001v00001AF4"));
        assert!(!glob(b"virtio:d00000001v*", b"virtio:d00000002v00001AF4"));
        assert!(glob(b"usb:v0BDAp8153d[2-9]*", b"usb:v0BDAp8153d3000dc00"));
        assert!(!glob(b"usb:v0BDAp8153d[2-9]*", b"usb:v0BDAp8153d1000dc00"));
        assert!(glob(b"a[!x]c", b"abc") && !glob(b"a[!x]c", b"axc"));
        assert!(glob(b"a[]]c", b"a]c"));
        assert!(glob(b"a[b", b"a[b") && !glob(b"a[b", b"ab"));
        assert!(glob(b"*", b"") && glob(b"a*b*c", b"aXXbYYc") && !glob(b"a*b*c", b"aXXbYY"));
        assert!(glob(b"?", b"x") && !glob(b"?", b""));
        assert!(!glob(b"abc", b"abcd") && !glob(b"abcd", b"abc"));
    }

    #[test]
    fn buses_come_from_the_patterns_prefixes() {
        let g = |when: &[&str]| Group { when: when.iter().map(|s| s.to_string()).collect(), modules: vec![] };
        let groups = [g(&[]), g(&["pci:v00001AF4d*", "pci:v00008086d*"]), g(&["virtio:d00000001v*"])];
        assert_eq!(buses(&groups), Some(vec!["pci".to_string(), "virtio".to_string()]));
        assert_eq!(buses(&[g(&[])]), Some(vec![]));
        // No bus to be read from the pattern: read them all.
        assert_eq!(buses(&[g(&["pci:v1*"]), g(&["*:v1*"])]), None);
        assert_eq!(buses(&[g(&["weird"])]), None);
        assert_eq!(buses(&[g(&["../x:y"])]), None);
        assert_eq!(buses(&[g(&["pci:v1*"]), g(&["of:N*T*Csnps,dwmac"])]), None);
    }

    #[test]
    fn render_then_parse_is_the_identity() {
        let groups = vec![
            Group { when: vec![], modules: vec![Module { path: "/m/nbd.ko".into(), params: vec!["nbds_max=1".into()], optional: false }] },
            Group {
                when: vec!["pci:v00001AF4d*".into(), "pci:v00001B36d*".into()],
                modules: vec![
                    Module { path: "/m/crc32c_intel.ko".into(), params: vec![], optional: true },
                    Module { path: "/m/virtio.ko".into(), params: vec![], optional: false },
                ],
            },
        ];
        assert!(render(&groups).contains("\n?/m/crc32c_intel.ko\n"), "{}", render(&groups));
        assert_eq!(parse(&render(&groups)).unwrap(), groups);
    }

    #[test]
    fn a_plain_path_list_is_one_always_group() {
        let g = parse("# old format\n/m/a.ko\n\n/m/b.ko x=1\n").unwrap();
        assert_eq!(g.len(), 1);
        assert!(g[0].when.is_empty());
        assert_eq!(g[0].modules[1], Module { path: "/m/b.ko".into(), params: vec!["x=1".into()], optional: false });
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(matches!(parse("group\n/m/a.ko\n"), Err(ListError::EmptyGroup { line: 1 })));
        assert!(matches!(parse(&"#".repeat(MAX_LIST_BYTES + 1)), Err(ListError::TooLong { .. })));
    }

    #[test]
    fn groups_load_when_a_device_matches() {
        let g = Group { when: vec!["pci:v00008086d0000100Esv*".into()], modules: vec![] };
        assert!(!wanted(&g, &["pci:v00001AF4d00001000sv0".into()]));
        assert!(wanted(&g, &["acpi:PNP0A03:".into(), "pci:v00008086d0000100Esv00001AF4".into()]));
        assert!(wanted(&Group { when: vec![], modules: vec![] }, &[]));
    }

    #[test]
    fn command_line_parameters_override_the_list() {
        let m = Module { path: "/lib/modules/x/kernel/drivers/block/nbd.ko".into(), params: vec!["nbds_max=1".into()], optional: false };
        assert_eq!(params_for(&m, "quiet"), "nbds_max=1");
        assert_eq!(params_for(&m, "quiet nbd.nbds_max=8 nbd.max_part=2 nbdx.a=1 ext4.b=2"), "nbds_max=8 max_part=2");
        let dash = Module { path: "/m/i2c-algo-bit.ko".into(), params: vec![], optional: false };
        assert_eq!(params_for(&dash, "i2c_algo_bit.bit_test=1"), "bit_test=1");
        assert_eq!(module_name("/m/virtio_net.ko.zst").as_deref(), Some("virtio_net"));
        assert_eq!(module_name("/m/modules.dep"), None);
    }
}
