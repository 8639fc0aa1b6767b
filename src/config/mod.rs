//! Configuration: TOML parsed into serde "wire" structs (`deny_unknown_fields`,
//! a serde enum for every closed set of words), then validated section by
//! section into a typed [`Config`]: `storage.rs` ([nbd], [images], [clients],
//! [unknown_clients]), `pxe.rs` ([pxe], [tftp], [http]), `dhcp.rs` ([dhcp]
//! and its pools). Runtime code never re-validates. Every error names the
//! file, the key and how to fix it.

mod dhcp;
mod pxe;
mod storage;
pub mod summary;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::ipxe::{BootSpec, ScriptParams};
use crate::mac::Mac;
use crate::storage::registry::{ClientRule, ImageSpec};

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_dir: PathBuf,
    /// `None` when the NBD service is disabled.
    pub nbd_listen: Option<Vec<SocketAddr>>,
    /// Client overlays open only from the address the client booted from
    /// (meaningful with PXE, which records that address).
    pub require_boot_address: bool,
    pub images: Vec<ImageSpec>,
    pub clients: BTreeMap<Mac, ClientRule>,
    /// What a MAC without a `[clients]` entry gets; `None` = refused.
    pub unknown: Option<ClientRule>,
    /// Image served under the empty export name.
    pub default_image: Option<String>,
    /// The PXE side, when `[pxe]` is configured.
    pub pxe: Option<PxeConfig>,
}

/// What the PXE services (TFTP now; DHCP and HTTP next) serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PxeConfig {
    pub boot_dir: PathBuf,
    pub script: ScriptParams,
    /// Kernel, initrd and arguments per image that has them.
    pub boot: BTreeMap<String, BootSpec>,
    /// `None` when TFTP is disabled.
    pub tftp_listen: Option<SocketAddr>,
    /// Per-client block size caps (some UEFI TFTP clients need them).
    pub tftp_blksize_caps: Vec<crate::tftp::BlksizeCap>,
    /// `None` when DHCP is off.
    pub dhcp: Option<crate::dhcp::DhcpConfig>,
    /// Interface to send IPv6 router advertisements (lifetime 0) on.
    pub ra_interface: Option<String>,
    /// `None` when HTTP is disabled.
    pub http_listen: Option<SocketAddr>,
}

impl PxeConfig {
    /// The images' kernels and initrds that are not in the boot directory,
    /// each a sentence naming its key: such an image's clients fetch their
    /// script, then fail to fetch the kernel.
    pub fn missing_image_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (image, b) in &self.boot {
            for (key, file) in [("kernel", &b.kernel), ("initrd", &b.initrd)] {
                if let Err(why) = crate::bootfiles::servable(&self.boot_dir, file) {
                    out.push(format!(
                        "images.{image}.{key}: {file} is not in {} ({why}): this image's clients will stop at their script's {key} fetch",
                        self.boot_dir.display()
                    ));
                }
            }
        }
        out
    }

    /// The firmware boot files DHCP offers that the boot directory lacks,
    /// each with where it comes from. Only firmware of that kind that does
    /// not run iPXE yet fetches one.
    pub fn missing_firmware_files(&self) -> Vec<String> {
        let Some(d) = &self.dhcp else { return Vec::new() };
        [&d.files.bios, &d.files.uefi_x64, &d.files.uefi_arm64]
            .into_iter()
            .filter(|f| crate::bootfiles::servable(&self.boot_dir, f).is_err())
            .map(|f| format!("{f} ({})", crate::dhcp::firmware_source(f, &d.files)))
            .collect()
    }
}

/// HTTP's well-known port.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";

/// TFTP's well-known port.
pub const DEFAULT_TFTP_LISTEN: &str = "0.0.0.0:69";

/// A configuration error: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `clients."52:54:00:12:34:56".image`.
    pub key: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}; {}", self.file.display(), self.problem, self.fix)
        } else {
            write!(f, "{}: `{}`: {}; {}", self.file.display(), self.key, self.problem, self.fix)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The port NBD clients expect.
pub const DEFAULT_NBD_LISTEN: &str = "0.0.0.0:10809";

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            problem: format!("cannot read the file ({e})"),
            fix: "check the path given to --config".into(),
        })?;
        Config::parse(&text, file)
    }

    /// Parse and validate TOML text; relative paths in it are resolved
    /// against the directory of `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: wire::Root = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            problem: e.message().to_string() + &e.span().map(|s| format!(" (at {})", line_col(text, s.start))).unwrap_or_default(),
            fix: "see config/pxeroot.example.toml for every key and its form".into(),
        })?;
        let dir = file.parent().unwrap_or(Path::new("."));
        raw.validate(&Cx { file, dir })
    }
}

/// What every section's validation needs: the file (for errors) and its
/// directory (relative paths are resolved against it).
struct Cx<'a> {
    file: &'a Path,
    dir: &'a Path,
}

impl Cx<'_> {
    /// An error at `key` (dotted, as the file spells it).
    fn err(&self, key: &str, problem: String, fix: &str) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), key: key.to_string(), problem, fix: fix.to_string() }
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// A service's listen address: `None` when its section says `enabled =
    /// false`, else `listen` or the default.
    fn listen(&self, section: Option<(bool, Option<&str>)>, default: &str, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        match section {
            Some((false, _)) => Ok(None),
            section => {
                let text = section.and_then(|(_, l)| l).unwrap_or(default);
                let addr = text
                    .parse()
                    .map_err(|_| self.err(key, format!("{text:?} is not an address:port"), &format!("write it as \"{default}\"")))?;
                Ok(Some(addr))
            }
        }
    }
}

fn line_col(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}")
}

impl wire::Root {
    /// Every section, validated on its own, into the typed configuration.
    fn validate(self, cx: &Cx) -> Result<Config, ConfigError> {
        let state_dir = cx.resolve(&self.state_dir);
        let (nbd_listen, require_boot_address) = storage::nbd(cx, self.nbd)?;
        let images = storage::images(cx, &self.images)?;
        let names = storage::ImageNames(&self.images);
        let clients = storage::clients(cx, &self.clients, &names)?;
        let unknown = storage::unknown_clients(cx, self.unknown_clients, &names)?;
        let default_image = storage::default_export(cx, self.default_export, &names)?;
        let pxe = match self.pxe {
            None => {
                let stray = [("tftp", self.tftp.is_some()), ("dhcp", self.dhcp.is_some()), ("http", self.http.is_some())];
                if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                    return Err(cx.err(key, "is set but [pxe] is missing".into(), "add [pxe] with server_address and boot_dir"));
                }
                None
            }
            Some(p) => {
                let nbd_port = nbd_listen.as_ref().and_then(|l| l.first()).map_or(nbd_wire::consts::DEFAULT_PORT, |a| a.port());
                let sections = pxe::Sections {
                    tftp: self.tftp,
                    http: self.http,
                    dhcp: self.dhcp,
                    images: &self.images,
                    clients: &self.clients,
                    state_dir: &state_dir,
                    nbd_port,
                };
                Some(pxe::pxe(cx, p, sections)?)
            }
        };
        Ok(Config { state_dir, nbd_listen, require_boot_address, images, clients, unknown, default_image, pxe })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::registry::OverlayPolicy;

    fn with_base(body: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.img"), [0u8; 512]).unwrap();
        let file = dir.path().join("pxeroot.toml");
        let r = Config::parse(body, &file);
        (dir, r)
    }

    const GOOD: &str = r#"
state_dir = "state"
[nbd]
listen = ["127.0.0.1:10809"]
[images.debian]
path = "base.img"
description = "Debian 12"
[clients."52-54-00-12-34-56"]
image = "debian"
policy = "ephemeral"
[unknown_clients]
action = "boot"
image = "debian"
"#;

    #[test]
    fn test_config_good_file_validates() {
        let (dir, r) = with_base(GOOD);
        let c = r.unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.images[0].path, dir.path().join("base.img"));
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(c.clients[&mac].policy, OverlayPolicy::Ephemeral);
        assert_eq!(c.unknown.unwrap().policy, OverlayPolicy::Ephemeral);
        assert_eq!(c.default_image.as_deref(), Some("debian"));
    }

    #[test]
    fn test_config_unknown_key_names_it() {
        let (_d, r) = with_base(&GOOD.replace("description", "descripton"));
        let e = r.unwrap_err();
        assert!(e.problem.contains("descripton"), "{e}");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn test_config_bad_values_name_key_and_fix() {
        let cases = [
            (GOOD.replace("52-54-00-12-34-56", "52-54-00-12-34"), "clients.\"52-54-00-12-34\""),
            (GOOD.replace("image = \"debian\"\npolicy", "image = \"ubuntu\"\npolicy"), "clients.\"52-54-00-12-34-56\".image"),
            (GOOD.replace("127.0.0.1:10809", "localhost"), "nbd.listen[0]"),
            (GOOD.replace("path = \"base.img\"", "path = \"missing.img\""), "images.debian.path"),
            (GOOD.replace("description", "partition = 0\ndescription"), "images.debian.partition"),
            (GOOD.replace("description", "partition = 129\ndescription"), "images.debian.partition"),
            (GOOD.replace("action = \"boot\"\nimage = \"debian\"", "action = \"boot\""), "unknown_clients.image"),
        ];
        for (text, key) in cases {
            let (_d, r) = with_base(&text);
            let e = r.unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(!e.fix.is_empty());
        }
    }

    /// Full mode's pools: the `[dhcp]` one first, then `[[dhcp.pools]]`,
    /// reservations on the pool of their subnet; one pool per subnet, a
    /// pool inside its subnet, a reservation on some pool's subnet.
    #[test]
    fn test_config_full_mode_pools() {
        let full = |extra: &str| {
            format!(
                "{GOOD}[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \".\"\n[dhcp]\nmode = \"full\"\n\
                 pool_start = \"10.0.0.100\"\npool_end = \"10.0.0.199\"\n{extra}"
            )
        };
        let relayed =
            "[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.8.199\"\nrouter = \"10.0.8.1\"\nmtu = 9000\ndomain = \"Lab.Example.\"\n\
             search = [\"Eng.Lab.Example\", \"lab.example.\"]\n";
        let text =
            full(relayed).replace("policy = \"ephemeral\"", "policy = \"ephemeral\"\naddress = \"10.0.8.50\"\nhostname = \"Lab-07\"");
        let c = with_base(&text).1.unwrap();
        let Some(crate::dhcp::Mode::Full { pools, .. }) = c.pxe.and_then(|p| p.dhcp).map(|d| d.mode) else { panic!("not full mode") };
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[1].range, ("10.0.8.100".parse().unwrap(), "10.0.8.199".parse().unwrap()));
        assert_eq!(pools[1].network.router, Some("10.0.8.1".parse().unwrap()));
        assert_eq!((pools[0].network.mtu, pools[1].network.mtu), (None, Some(9000)));
        assert_eq!((pools[0].network.domain.as_deref(), pools[1].network.domain.as_deref()), (None, Some("lab.example")));
        assert_eq!(
            (pools[0].network.search.len(), &pools[1].network.search[..]),
            (0, &["eng.lab.example".to_string(), "lab.example".into()][..])
        );
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert!(pools[0].reservations.is_empty());
        assert_eq!(pools[1].reservations[&mac], "10.0.8.50".parse::<std::net::Ipv4Addr>().unwrap());
        // A client's name, whichever pool its request comes through.
        assert!(pools.iter().all(|p| p.names.get(&mac).map(String::as_str) == Some("lab-07")));

        let cases = [
            (full("[[dhcp.pools]]\nstart = \"10.0.0.20\"\nend = \"10.0.0.30\"\n"), "dhcp.pools[0].start", "subnet of dhcp.pool_start"),
            (full("[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.9.10\"\n"), "dhcp.pools[0].end", "spans more than one"),
            (full("[[dhcp.pools]]\nend = \"10.0.8.10\"\n"), "dhcp.pools[0].start", "required"),
            (full("netmask = \"255.0.255.0\"\n"), "dhcp.netmask", "not a netmask"),
            (full("mtu = 67\n"), "dhcp.mtu", "not an MTU"),
            (full("domain = \"lab example\"\n"), "dhcp.domain", "not a domain name"),
            (full("ntp = [\"10.0.0.1\", \"ntp.lab\"]\n"), "dhcp.ntp[1]", "not an IPv4 address"),
            (full("search = [\"lab.example\", \"lab example\"]\n"), "dhcp.search[1]", "not a domain name"),
            (full("search = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\"]\n"), "dhcp.search", "lists 7 domains"),
            (
                full("").replace("policy = \"ephemeral\"", "policy = \"ephemeral\"\nhostname = \"lab 07\""),
                "clients.\"52-54-00-12-34-56\".hostname",
                "not a host name",
            ),
            (
                full("[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.8.199\"\ndomain = \"a..b\"\n"),
                "dhcp.pools[0].domain",
                "not a domain",
            ),
            (full("[[dhcp.pools]]\nstart = \"10.0.8.100\"\nend = \"10.0.8.199\"\nmtu = 70000\n"), "dhcp.pools[0].mtu", "not an MTU"),
            (
                full(relayed).replace("policy = \"ephemeral\"", "policy = \"ephemeral\"\naddress = \"10.0.9.50\""),
                "clients.\"52-54-00-12-34-56\".address",
                "on no pool's subnet",
            ),
        ];
        for (text, key, problem) in cases {
            let e = with_base(&text).1.unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.problem.contains(problem) && !e.fix.is_empty(), "{e}");
        }
    }

    #[test]
    fn test_config_service_listen_default_disabled_and_bad() {
        let pxe = format!("{GOOD}[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \".\"\n");
        let c = with_base(&pxe).1.unwrap();
        let p = c.pxe.unwrap();
        assert_eq!(p.tftp_listen, Some(DEFAULT_TFTP_LISTEN.parse().unwrap()));
        assert_eq!(p.http_listen, Some(DEFAULT_HTTP_LISTEN.parse().unwrap()));
        let c = with_base(&format!("{pxe}[tftp]\nenabled = false\n[http]\nlisten = \"127.0.0.1:8080\"\n")).1.unwrap();
        let p = c.pxe.unwrap();
        assert_eq!((p.tftp_listen, p.http_listen), (None, Some("127.0.0.1:8080".parse().unwrap())));
        for (section, key, default) in [("tftp", "tftp.listen", DEFAULT_TFTP_LISTEN), ("http", "http.listen", DEFAULT_HTTP_LISTEN)] {
            let e = with_base(&format!("{pxe}[{section}]\nlisten = \"nowhere\"\n")).1.unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.problem.contains("nowhere") && e.fix.contains(default), "{e}");
        }
    }

    #[test]
    fn test_config_bad_policy_is_a_parse_error() {
        let (_d, r) = with_base(&GOOD.replace("\"ephemeral\"", "\"sometimes\""));
        assert!(r.unwrap_err().problem.contains("sometimes"));
    }

    /// Every closed set of words is a serde enum: a word outside it is
    /// refused at parse time, naming the word, the words allowed and where.
    #[test]
    fn test_config_words_outside_their_set_are_named_with_the_choices() {
        let pxe = format!("{GOOD}[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \".\"\n");
        let cases = [
            (format!("{pxe}[dhcp]\nmode = \"fulll\"\n"), "fulll", "`full`"),
            (format!("{pxe}[dhcp]\nuefi = \"via4011\"\n"), "via4011", "`via-4011`"),
            (format!("{pxe}[dhcp]\nuefi_by_class.\"PXEClient:Arch:00007\" = \"offer\"\n"), "offer", "`in-offer`"),
            (pxe.replace("boot_dir = \".\"", "boot_dir = \".\"\nattach = \"nbd\""), "nbd", "`netlink`"),
            (pxe.replace("boot_dir = \".\"", "boot_dir = \".\"\nboot_files_over = \"ftp\""), "ftp", "`tftp`"),
        ];
        for (text, word, choice) in cases {
            let e = with_base(&text).1.unwrap_err();
            assert!(e.problem.contains(word) && e.problem.contains(choice) && e.problem.contains("line"), "{e}");
        }
        let c = with_base(&format!("{pxe}[dhcp]\nmode = \"off\"\nuefi = \"via-4011\"\n")).1.unwrap();
        assert!(c.pxe.unwrap().dhcp.is_none(), "mode = \"off\" runs no DHCP");
    }
}
