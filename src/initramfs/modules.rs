//! Kernel module resolution for the initramfs: find each module's file in a
//! `/lib/modules/<release>` tree, its hard dependencies and its soft
//! pre/post dependencies, and order them so each loads after what it needs.
//!
//! Facts come from `modules.dep` / `modules.softdep` when the tree has them,
//! otherwise from each module's own `.modinfo` ELF section (`depends=`,
//! `softdep=`, `alias=`): an unpacked Debian kernel package has no
//! modules.dep. Modules listed in `modules.builtin` need no file.
//! The ordering itself (`order`) is pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module {name} is neither in {dir} nor built into the kernel (modules.builtin)")]
    NotFound { name: String, dir: PathBuf },
    #[error("{path} is not a kernel module: {reason}")]
    BadModule { path: PathBuf, reason: &'static str },
    #[error("cannot decompress {path}")]
    Decompress { path: PathBuf },
}

/// Longest `.modinfo` section we read; real ones are a few KiB.
const MAX_MODINFO: u64 = 1 << 20;
/// Section headers we walk in one module file.
const MAX_SECTIONS: u64 = 4096;

/// What one module says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub depends: Vec<String>,
    pub soft_pre: Vec<String>,
    pub soft_post: Vec<String>,
    pub aliases: Vec<String>,
    /// Firmware files it may ask for, relative to /lib/firmware.
    pub firmware: Vec<String>,
}

/// Module names use `_` and `-` interchangeably.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(path: &Path) -> Option<String> {
    modlist::module_name(path.file_name()?.to_str()?)
}

/// Parse `softdep` text: `pre: a b post: c`.
fn parse_softdep(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    let mut cur = None;
    for w in text.split_whitespace() {
        match w {
            "pre:" => cur = Some(true),
            "post:" => cur = Some(false),
            name => match cur {
                Some(true) => pre.push(normalize(name)),
                Some(false) => post.push(normalize(name)),
                None => {}
            },
        }
    }
    (pre, post)
}

/// Parse the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for item in section.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let item = String::from_utf8_lossy(item);
        let Some((k, v)) = item.split_once('=') else { continue };
        match k {
            "depends" => info.depends.extend(v.split(',').filter(|s| !s.is_empty()).map(normalize)),
            "softdep" => {
                let (pre, post) = parse_softdep(v);
                info.soft_pre.extend(pre);
                info.soft_post.extend(post);
            }
            "alias" => info.aliases.push(v.to_string()),
            "firmware" => info.firmware.push(v.to_string()),
            _ => {}
        }
    }
    info
}

/// The `.modinfo` section of an ELF64 little-endian relocatable object.
pub fn modinfo_section(elf: &[u8]) -> Result<&[u8], &'static str> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u64);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not an ELF64 little-endian file");
    }
    let shoff = u64_at(0x28).ok_or("truncated header")?;
    let shentsize = u16_at(0x3a).ok_or("truncated header")?;
    let shnum = u16_at(0x3c).ok_or("truncated header")?;
    let shstrndx = u16_at(0x3e).ok_or("truncated header")?;
    if shnum > MAX_SECTIONS || shentsize < 64 {
        return Err("implausible section table");
    }
    let sh = |i: u64| -> Option<(u64, u64, u64)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)? as usize;
        Some((u32_at(base)?, u64_at(base + 0x18)?, u64_at(base + 0x20)?))
    };
    let (_, stroff, strsize) = sh(shstrndx).ok_or("section names out of range")?;
    let names = elf.get(stroff as usize..(stroff + strsize) as usize).ok_or("section names out of range")?;
    for i in 0..shnum {
        let (name_off, off, size) = sh(i).ok_or("section header out of range")?;
        let name = names.get(name_off as usize..).and_then(|n| n.split(|&b| b == 0).next()).unwrap_or_default();
        if name == b".modinfo" {
            if size > MAX_MODINFO {
                return Err(".modinfo is implausibly large");
            }
            return elf.get(off as usize..(off + size) as usize).ok_or(".modinfo out of range");
        }
    }
    Err("no .modinfo section")
}

/// A module file's bytes, decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let raw = std::fs::read(path).map_err(|source| ModuleError::Read { path: path.to_path_buf(), source })?;
    let name = path.to_string_lossy();
    let bad = || ModuleError::Decompress { path: path.to_path_buf() };
    if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|_| bad())?;
        Ok(out)
    } else if name.ends_with(".ko.zst") {
        let mut out = Vec::new();
        ruzstd::StreamingDecoder::new(&raw[..]).map_err(|_| bad())?.read_to_end(&mut out).map_err(|_| bad())?;
        Ok(out)
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|_| bad())?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// A kernel's module tree.
pub struct ModuleTree {
    pub dir: PathBuf,
    /// Module name -> file, relative to `dir`.
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    /// Aliases that built-in modules provide (modules.builtin.modinfo): a
    /// soft dependency on one (btrfs's on `sha256`) needs no module.
    builtin_aliases: BTreeSet<String>,
    /// From modules.dep / modules.softdep when present.
    dep_file: Option<HashMap<String, Vec<String>>>,
    softdep_file: HashMap<String, (Vec<String>, Vec<String>)>,
    /// Alias -> module, built on first need from every module's .modinfo.
    aliases: Option<BTreeMap<String, String>>,
    infos: HashMap<String, ModInfo>,
}

fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, root, out)?;
        } else if let Some(name) = module_name(&p) {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            out.entry(name).or_insert(rel);
        }
    }
    Ok(())
}

impl ModuleTree {
    pub fn open(dir: &Path) -> Result<ModuleTree, ModuleError> {
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|source| ModuleError::Read { path: p, source });
        let mut files = BTreeMap::new();
        walk(&dir.join("kernel"), dir, &mut files).map_err(|source| ModuleError::Read { path: dir.join("kernel"), source })?;
        let builtin = match read(dir.join("modules.builtin")) {
            Ok(t) => t.lines().filter_map(|l| module_name(Path::new(l.trim()))).collect(),
            Err(_) => BTreeSet::new(),
        };
        // NUL-separated `module.key=value` records.
        let builtin_aliases = std::fs::read(dir.join("modules.builtin.modinfo"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter_map(|rec| std::str::from_utf8(rec).ok()?.split_once(".alias=").map(|(_, a)| normalize(a)))
                    .collect()
            })
            .unwrap_or_default();
        let dep_file = read(dir.join("modules.dep")).ok().map(|t| {
            t.lines()
                .filter_map(|l| {
                    let (m, deps) = l.split_once(':')?;
                    let name = module_name(Path::new(m))?;
                    Some((name, deps.split_whitespace().filter_map(|d| module_name(Path::new(d))).collect()))
                })
                .collect()
        });
        let mut softdep_file = HashMap::new();
        if let Ok(t) = read(dir.join("modules.softdep")) {
            for l in t.lines() {
                let mut w = l.split_whitespace();
                if w.next() == Some("softdep") {
                    if let Some(m) = w.next() {
                        softdep_file.insert(normalize(m), parse_softdep(&w.collect::<Vec<_>>().join(" ")));
                    }
                }
            }
        }
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            files,
            builtin,
            builtin_aliases,
            dep_file,
            softdep_file,
            aliases: None,
            infos: HashMap::new(),
        })
    }

    pub fn file(&self, name: &str) -> Option<&Path> {
        self.files.get(name).map(PathBuf::as_path)
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(name)
    }

    fn info(&mut self, name: &str) -> Result<ModInfo, ModuleError> {
        if let Some(i) = self.infos.get(name) {
            return Ok(i.clone());
        }
        let rel = self.files.get(name).cloned().ok_or_else(|| ModuleError::NotFound { name: name.into(), dir: self.dir.clone() })?;
        let path = self.dir.join(&rel);
        let bytes = read_module(&path)?;
        let section = modinfo_section(&bytes).map_err(|reason| ModuleError::BadModule { path: path.clone(), reason })?;
        let info = parse_modinfo(section);
        self.infos.insert(name.to_string(), info.clone());
        Ok(info)
    }

    /// The device aliases a module claims (`alias=` in its `.modinfo`).
    pub fn aliases(&mut self, name: &str) -> Result<Vec<String>, ModuleError> {
        Ok(self.info(name)?.aliases)
    }

    /// The firmware files a module may ask for (`firmware=` in its `.modinfo`).
    pub fn firmware(&mut self, name: &str) -> Result<Vec<String>, ModuleError> {
        Ok(self.info(name)?.firmware)
    }

    /// Hard dependencies and soft pre/post dependencies of `name`.
    pub fn deps(&mut self, name: &str) -> Result<Deps, ModuleError> {
        let info = if self.dep_file.is_some() && !self.softdep_file.is_empty() { None } else { Some(self.info(name)?) };
        let hard = match &self.dep_file {
            Some(d) => d.get(name).cloned().unwrap_or_default(),
            None => info.as_ref().map(|i| i.depends.clone()).unwrap_or_default(),
        };
        let (mut pre, mut post) = self.softdep_file.get(name).cloned().unwrap_or_default();
        if let Some(i) = &info {
            pre.extend(i.soft_pre.iter().cloned());
            post.extend(i.soft_post.iter().cloned());
        }
        Ok((hard, pre, post))
    }

    /// Resolve a name that may be an alias (e.g. `crc32c`) to a module.
    /// Generic implementations win over CPU-specific ones: they always load
    /// (sha256_ssse3 fails with ENODEV on a CPU without SSSE3, as QEMU's
    /// default one). So does a built-in module that provides the alias:
    /// then no module is needed (`Ok(None)`).
    pub fn resolve(&mut self, name: &str) -> Result<Option<String>, ModuleError> {
        let n = normalize(name);
        if self.files.contains_key(&n) {
            return Ok(Some(n));
        }
        if self.builtin.contains(&n) || self.builtin_aliases.contains(&n) {
            return Ok(None);
        }
        if self.aliases.is_none() {
            let mut map: BTreeMap<String, String> = BTreeMap::new();
            let names: Vec<String> = self.files.keys().cloned().collect();
            for m in names {
                for a in self.info(&m)?.aliases.iter().map(|a| normalize(a)) {
                    let generic = m.ends_with("_generic");
                    match map.get(&a) {
                        Some(existing) if existing.ends_with("_generic") || !generic => {}
                        _ => {
                            map.insert(a, m.clone());
                        }
                    }
                }
            }
            self.aliases = Some(map);
        }
        match self.aliases.as_ref().and_then(|a| a.get(&n)) {
            Some(m) => Ok(Some(m.clone())),
            None => Err(ModuleError::NotFound { name: name.into(), dir: self.dir.clone() }),
        }
    }
}

/// A module's `(hard, soft pre, soft post)` dependencies.
pub type Deps = (Vec<String>, Vec<String>, Vec<String>);

/// Dependency facts for the pure ordering step.
pub trait DepSource {
    /// `(hard, soft pre, soft post)` of a module, names already resolved;
    /// `None` for a module that needs no file (built in).
    fn deps_of(&mut self, name: &str) -> Result<Option<Deps>, ModuleError>;
}

impl DepSource for ModuleTree {
    fn deps_of(&mut self, name: &str) -> Result<Option<Deps>, ModuleError> {
        if !self.files.contains_key(name) {
            return Ok(None);
        }
        let (hard, pre, post) = self.deps(name)?;
        let mut r = |v: Vec<String>, soft: bool| -> Result<Vec<String>, ModuleError> {
            let mut out = Vec::new();
            for d in v {
                match self.resolve(&d) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => {}
                    // A soft dependency that does not exist is not needed.
                    Err(_) if soft => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        };
        Ok(Some((r(hard, false)?, r(pre, true)?, r(post, true)?)))
    }
}

/// The modules `wanted` cannot load without: themselves and their hard
/// dependencies, transitively. What [`order`] adds beyond these came in
/// only through soft dependencies, which modprobe lets fail.
pub fn required(wanted: &[String], src: &mut impl DepSource) -> Result<BTreeSet<String>, ModuleError> {
    let (mut out, mut todo) = (BTreeSet::new(), wanted.to_vec());
    while let Some(m) = todo.pop() {
        if !out.insert(m.clone()) {
            continue;
        }
        if let Some((hard, _, _)) = src.deps_of(&m)? {
            todo.extend(hard);
        }
    }
    Ok(out)
}

/// Load order for `wanted`: each module after its hard dependencies and
/// soft pre-dependencies, and before its soft post-dependencies.
pub fn order(wanted: &[String], src: &mut impl DepSource) -> Result<Vec<String>, ModuleError> {
    fn visit(
        m: &str,
        src: &mut impl DepSource,
        done: &mut BTreeSet<String>,
        active: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if done.contains(m) || active.contains(m) {
            // `active`: a cycle (soft dependencies can form one); break it.
            return Ok(());
        }
        active.insert(m.to_string());
        let Some((hard, pre, post)) = src.deps_of(m)? else {
            active.remove(m);
            done.insert(m.to_string());
            return Ok(());
        };
        for d in hard.iter().chain(pre.iter()) {
            visit(d, src, done, active, out)?;
        }
        active.remove(m);
        done.insert(m.to_string());
        out.push(m.to_string());
        for d in &post {
            visit(d, src, done, active, out)?;
        }
        Ok(())
    }
    let (mut done, mut active, mut out) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for m in wanted {
        visit(m, src, &mut done, &mut active, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hard, soft-pre and soft-post dependencies by module name.
    type Names = Vec<&'static str>;
    struct Fake(HashMap<&'static str, (Names, Names, Names)>);

    impl DepSource for Fake {
        fn deps_of(&mut self, name: &str) -> Result<Option<Deps>, ModuleError> {
            let s = |v: &Vec<&str>| v.iter().map(|x| x.to_string()).collect();
            Ok(self.0.get(name).map(|(h, p, q)| (s(h), s(p), s(q))))
        }
    }

    #[test]
    fn test_order_puts_hard_and_soft_deps_first() {
        let mut f = Fake(HashMap::from([
            ("ext4", (vec!["jbd2", "mbcache", "crc16"], vec!["crc32c_generic"], vec![])),
            ("jbd2", (vec![], vec![], vec![])),
            ("mbcache", (vec![], vec![], vec![])),
            ("crc16", (vec![], vec![], vec![])),
            ("crc32c_generic", (vec![], vec![], vec![])),
            ("virtio_net", (vec!["net_failover", "virtio"], vec![], vec![])),
            ("net_failover", (vec!["failover"], vec![], vec![])),
            ("failover", (vec![], vec![], vec![])),
            ("virtio", (vec![], vec![], vec!["extra_post"])),
            ("extra_post", (vec![], vec![], vec![])),
        ]));
        let got = order(&["virtio_net".into(), "ext4".into()], &mut f).unwrap();
        let pos = |m: &str| got.iter().position(|x| x == m).unwrap_or_else(|| panic!("{m} missing from {got:?}"));
        assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
        assert!(pos("virtio") < pos("virtio_net") && pos("virtio") < pos("extra_post"));
        assert!(pos("crc32c_generic") < pos("ext4"), "soft pre-dependency must load first: {got:?}");
        assert!(pos("jbd2") < pos("ext4"));
        assert_eq!(got.len(), 10);
        // Only soft dependencies brought in crc32c_generic and extra_post.
        let need = required(&["virtio_net".into(), "ext4".into()], &mut f).unwrap();
        let optional: Vec<&String> = got.iter().filter(|m| !need.contains(*m)).collect();
        assert_eq!(optional, ["extra_post", "crc32c_generic"]);
    }

    #[test]
    fn test_order_skips_builtins_and_survives_soft_cycles() {
        let mut f = Fake(HashMap::from([("a", (vec!["builtin_x"], vec!["b"], vec![])), ("b", (vec![], vec!["a"], vec![]))]));
        let got = order(&["a".into()], &mut f).unwrap();
        assert_eq!(got, vec!["b".to_string(), "a".to_string()]);
    }

    #[test]
    fn test_parse_modinfo_fields() {
        let i = parse_modinfo(
            b"license=GPL\0depends=jbd2,mbcache,crc16\0softdep=pre: crc32c post: foo-bar\0alias=fs-ext4\0firmware=rtl_nic/a.fw\0\0",
        );
        assert_eq!(i.firmware, vec!["rtl_nic/a.fw"]);
        assert_eq!(i.depends, vec!["jbd2", "mbcache", "crc16"]);
        assert_eq!(i.soft_pre, vec!["crc32c"]);
        assert_eq!(i.soft_post, vec!["foo_bar"]);
        assert_eq!(i.aliases, vec!["fs-ext4"]);
    }

    #[test]
    fn test_modinfo_section_rejects_non_elf() {
        assert!(modinfo_section(b"not an elf file at all, really").is_err());
        assert!(modinfo_section(&[]).is_err());
    }
}
