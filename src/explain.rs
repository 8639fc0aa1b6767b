//! `pxeroot explain MAC`: what a client gets if it boots now, and why,
//! from the configuration and the state directory alone (no daemon needed):
//! the table that matched, its image and policy, the boot file its firmware
//! is offered in this DHCP mode, its address in full mode, the script it
//! gets, its overlay and base record, and whether it would be refused, with
//! the fix.
//!
//! [`explain`] is pure: the facts that take I/O (which boot files are
//! there, the overlay, the base's fingerprint) come in as [`Facts`],
//! gathered by [`gather`].

use std::net::IpAddr;
use std::path::PathBuf;

use crate::config::{Config, PxeConfig};
use crate::dhcp::decide::{Arch, UefiStrategy};
use crate::dhcp::{DhcpConfig, Mode};
use crate::mac::Mac;
use crate::storage::records::{BaseRecord, Records};
use crate::storage::registry::{ClientRule, OverlayPolicy};

/// The firmware `explain` answers for (`--arch`); all of them when none is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// Legacy BIOS PXE (option 93 = 0).
    Bios,
    /// UEFI x64 PXE (option 93 = 7 or 9).
    UefiX64,
    /// UEFI x64 HTTP boot (option 60 `HTTPClient`).
    UefiHttp,
    /// ARM64 UEFI PXE (option 93 = 11).
    Arm64,
    /// A client already running iPXE (a NIC's ROM, or after the above).
    Ipxe,
}

impl Firmware {
    pub const ALL: [Firmware; 5] = [Firmware::Bios, Firmware::UefiX64, Firmware::UefiHttp, Firmware::Arm64, Firmware::Ipxe];

    fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::UefiX64 => "uefi-x64",
            Firmware::UefiHttp => "uefi-http",
            Firmware::Arm64 => "arm64",
            Firmware::Ipxe => "ipxe",
        }
    }
}

/// What `explain` needs that takes I/O.
#[derive(Debug, Default)]
pub struct Facts {
    /// Files in the boot directory that cannot be served, each with why.
    pub unservable: Vec<(String, String)>,
    /// The client's overlay file and its size, if it has one.
    pub overlay: Option<(PathBuf, u64)>,
    /// The overlay's base record, or why it cannot be read.
    pub record: Option<Result<BaseRecord, String>>,
    /// The image's base as it is now, or why it cannot be read.
    pub base: Option<Result<BaseRecord, String>>,
    /// Where the client last booted from (its boot-address record).
    pub booted_from: Option<IpAddr>,
}

/// What a client gets: lines to print, and the refusal with its fix.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Explanation {
    pub lines: Vec<String>,
    /// Why it would not boot and what to do, if it would not.
    pub refused: Option<String>,
}

impl Explanation {
    fn say(&mut self, line: String) {
        self.lines.push(line);
    }

    fn refuse(&mut self, why: String) {
        self.refused.get_or_insert(why);
    }
}

/// The rule for `mac` and the table it came from.
fn rule_for(c: &Config, mac: Mac) -> Option<(ClientRule, String)> {
    match (c.clients.get(&mac), &c.unknown) {
        (Some(r), _) => Some((r.clone(), format!("[clients.\"{mac}\"]"))),
        (None, Some(r)) => Some((r.clone(), "[unknown_clients] action = \"boot\"".to_string())),
        (None, None) => None,
    }
}

/// What `mac` gets under `c`, for `firmware` (each of them when empty).
pub fn explain(c: &Config, mac: Mac, firmware: &[Firmware], facts: &Facts) -> Explanation {
    let mut e = Explanation::default();
    e.say(format!("client {mac}"));
    let Some((rule, table)) = rule_for(c, mac) else {
        e.say("  matched: nothing (no [clients] table for it, and [unknown_clients] refuses)".into());
        e.refuse(format!(
            "{mac} is not in the config and unknown clients are refused: add a [clients.\"{mac}\"] table, or set unknown_clients.action = \"boot\""
        ));
        return verdict(e);
    };
    let policy = match rule.policy {
        OverlayPolicy::Persistent => "persistent (kept across reboots)",
        OverlayPolicy::Ephemeral => "ephemeral (thrown away at each new boot)",
    };
    e.say(format!("  matched: {table}"));
    let path = c.images.iter().find(|i| i.name == rule.image).map(|i| i.path.display().to_string()).unwrap_or_default();
    e.say(format!("  image: {} ({path}), overlay {policy}", rule.image));
    match &c.pxe {
        None => {
            e.say(format!("  network boot: none configured ([pxe] is missing); a direct kernel boot attaches it with pxeroot.export={mac}"))
        }
        Some(pxe) => network_boot(&mut e, pxe, mac, &rule, firmware, facts),
    }
    overlay(&mut e, c, &rule, facts);
    verdict(e)
}

/// The last line: it boots, or the first reason it would not.
fn verdict(mut e: Explanation) -> Explanation {
    let line = match &e.refused {
        None => "  verdict: it boots".to_string(),
        Some(why) => format!("  verdict: refused: {why}"),
    };
    e.say(line);
    e
}

/// DHCP's answer per firmware, full mode's address, the boot files and
/// the script.
fn network_boot(e: &mut Explanation, pxe: &PxeConfig, mac: Mac, rule: &ClientRule, firmware: &[Firmware], facts: &Facts) {
    let missing = |file: &str| facts.unservable.iter().find(|(f, _)| f == file).map(|(_, why)| why.clone());
    match &pxe.dhcp {
        None => e.say(format!(
            "  DHCP: off; the site's DHCP server must name the boot file itself (iPXE: {})",
            crate::bootfiles::script_url(pxe.script.server, mac)
        )),
        Some(d) => {
            let mode = match d.mode {
                Mode::Proxy => "proxy (beside the site's DHCP server)",
                Mode::Full { .. } => "full (the only DHCP server)",
            };
            e.say(format!("  DHCP: {mode}"));
            let wanted: &[Firmware] = if firmware.is_empty() { &Firmware::ALL } else { firmware };
            for f in wanted {
                let offer = offered(d, pxe, mac, *f);
                let note = match (*f, &offer) {
                    (Firmware::Ipxe | Firmware::UefiHttp, Some(_)) => String::new(),
                    (_, Some(file)) => match missing(file) {
                        None => String::new(),
                        Some(why) => {
                            let fix = crate::dhcp::firmware_source(file, &d.files);
                            e.refuse(format!("{file} is not in the boot directory ({why}); {fix}"));
                            format!(": NOT in the boot directory ({why}); {fix}")
                        }
                    },
                    (_, None) => String::new(),
                };
                let how = match (*f, &d.mode, d.uefi) {
                    (Firmware::UefiX64 | Firmware::Arm64, Mode::Proxy, UefiStrategy::Via4011) => " (in the ACK on port 4011)",
                    _ => "",
                };
                match offer {
                    Some(file) => e.say(format!("    {:9} firmware is offered {file}{how}{note}", f.name())),
                    None => e.say(format!("    {:9} firmware is not answered: HTTP is disabled ([http])", f.name())),
                }
            }
            if let Mode::Full { pools, .. } = &d.mode {
                let reserved = pools.iter().find_map(|p| p.reservations.get(&mac).map(|a| (a, p)));
                match reserved {
                    Some((a, p)) => e.say(format!("  address: {a}, reserved (pool {}-{})", p.range.0, p.range.1)),
                    None => {
                        let first = pools.first().map(|p| format!("{}-{}", p.range.0, p.range.1)).unwrap_or_default();
                        e.say(format!("  address: the next free one of its segment's pool ({first} on this one)"))
                    }
                }
                if let Some(name) = pools.first().and_then(|p| p.names.get(&mac)) {
                    e.say(format!("  hostname: {name}"));
                }
            }
        }
    }
    let Some(spec) = pxe.boot.get(&rule.image) else {
        e.say(format!("  script: none (images.{} has no kernel and initrd)", rule.image));
        e.refuse(format!(
            "images.{} names no kernel and initrd, so its clients get no boot script: give both (paths in pxe.boot_dir)",
            rule.image
        ));
        return;
    };
    for (key, file) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
        match missing(file) {
            None => e.say(format!("  {key}: {file}")),
            Some(why) => {
                e.say(format!("  {key}: {file}: NOT in the boot directory ({why})"));
                e.refuse(format!("images.{}.{key}: {file} is not in {} ({why})", rule.image, pxe.boot_dir.display()));
            }
        }
    }
    e.say(format!("  script ({}):", crate::bootfiles::script_url(pxe.script.server, mac)));
    for line in crate::ipxe::render(&pxe.script, mac, spec).lines() {
        e.say(format!("    {line}"));
    }
}

/// The boot file DHCP names for `f` (`None`: not answered).
fn offered(d: &DhcpConfig, pxe: &PxeConfig, mac: Mac, f: Firmware) -> Option<String> {
    match f {
        Firmware::Bios => Some(d.files.for_arch(Arch::Bios).to_string()),
        Firmware::UefiX64 => Some(d.files.for_arch(Arch::UefiX64).to_string()),
        Firmware::Arm64 => Some(d.files.for_arch(Arch::UefiArm64).to_string()),
        Firmware::UefiHttp => d.http_base.as_deref().map(|b| crate::dhcp::decide::http_boot_url(b, d.files.for_arch(Arch::UefiX64))),
        Firmware::Ipxe => Some(crate::bootfiles::script_url(pxe.script.server, mac)),
    }
}

/// The client's overlay, its base record against the base now, and where
/// it last booted from.
fn overlay(e: &mut Explanation, c: &Config, rule: &ClientRule, facts: &Facts) {
    let Some((path, size)) = &facts.overlay else {
        e.say("  overlay: none yet (made at its first boot)".into());
        return;
    };
    e.say(format!("  overlay: {} ({size} bytes)", path.display()));
    if rule.policy == OverlayPolicy::Ephemeral {
        e.say("    (ephemeral: a new boot starts from an empty one)".into());
    }
    match (&facts.record, &facts.base) {
        (Some(Ok(record)), Some(Ok(base))) if record == base => e.say("  base record: matches the base".into()),
        (Some(Ok(record)), Some(Ok(base))) => {
            e.say(format!(
                "  base record: made from {} ({} bytes, fingerprint {}); the base is now {} ({} bytes, fingerprint {})",
                record.path.display(),
                record.size,
                record.fingerprint,
                base.path.display(),
                base.size,
                base.fingerprint
            ));
            if rule.policy == OverlayPolicy::Persistent {
                e.refuse(format!(
                    "its overlay {} belongs to another base: delete it (its data is lost) or point the client back at its old image",
                    path.display()
                ));
            }
        }
        (Some(Err(why)), _) => {
            e.say(format!("  base record: {why}"));
            if rule.policy == OverlayPolicy::Persistent {
                e.refuse(format!("its overlay's base record cannot be read ({why}): delete the overlay {}", path.display()));
            }
        }
        (_, Some(Err(why))) => e.say(format!("  base: {why}")),
        _ => {}
    }
    if let Some(a) = facts.booted_from {
        let note = if c.require_boot_address && c.pxe.is_some() { " (its overlay opens only for that address)" } else { "" };
        e.say(format!("  last boot from: {a}{note}"));
    }
}

/// The facts `explain` needs for `mac`, read from the boot directory, the
/// state directory and the image (its sampled fingerprint).
pub fn gather(c: &Config, mac: Mac) -> Facts {
    let mut facts = Facts::default();
    let Some((rule, _)) = rule_for(c, mac) else { return facts };
    if let Some(pxe) = &c.pxe {
        let mut files: Vec<String> = pxe.boot.get(&rule.image).map(|b| vec![b.kernel.clone(), b.initrd.clone()]).unwrap_or_default();
        if let Some(d) = &pxe.dhcp {
            files.extend([Arch::Bios, Arch::UefiX64, Arch::UefiArm64].map(|a| d.files.for_arch(a).to_string()));
        }
        for f in files {
            if let Err(why) = crate::bootfiles::servable(&pxe.boot_dir, &f) {
                facts.unservable.push((f, why.to_string()));
            }
        }
    }
    let records = Records::open(c.state_dir.clone());
    let path = records.overlay_path(mac);
    if let Ok(m) = std::fs::metadata(&path) {
        facts.overlay = Some((path, m.len()));
        facts.record = Some(records.read_base(mac).map_err(|e| crate::nbd::format_chain(&e)));
        let base = c.images.iter().find(|i| i.name == rule.image).map(|i| {
            crate::storage::BaseImage::open(&std::path::absolute(&i.path).unwrap_or(i.path.clone()))
                .and_then(|b| crate::storage::records::fingerprint(&b))
                .map_err(|e| crate::nbd::format_chain(&e))
        });
        facts.base = base;
    }
    facts.booted_from = records.booted_from(mac);
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: &str = "52:54:00:12:34:56";

    /// A config in a temporary directory with a base image and a boot
    /// directory holding `files`; `extra` appended to a proxy-mode config.
    fn setup(files: &[&str], extra: &str) -> (tempfile::TempDir, Config) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.img"), vec![7u8; 1 << 16]).unwrap();
        std::fs::create_dir_all(d.path().join("boot")).unwrap();
        for f in files {
            std::fs::write(d.path().join("boot").join(f), b"x").unwrap();
        }
        let text = format!(
            "state_dir = \"state\"\n[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \"boot\"\n\
             [images.debian]\npath = \"base.img\"\nkernel = \"vmlinuz\"\ninitrd = \"initrd.img\"\n{extra}"
        );
        let c = Config::parse(&text, &d.path().join("pxeroot.toml")).unwrap();
        (d, c)
    }

    const ALL_FILES: [&str; 5] = ["vmlinuz", "initrd.img", "undionly.kpxe", "ipxe.efi", "ipxe-arm64.efi"];
    const KNOWN: &str = "[dhcp]\nmode = \"proxy\"\n[clients.\"52:54:00:12:34:56\"]\nimage = \"debian\"\n";

    fn run(c: &Config, firmware: &[Firmware]) -> Explanation {
        let mac: Mac = MAC.parse().unwrap();
        explain(c, mac, firmware, &gather(c, mac))
    }

    fn has(e: &Explanation, text: &str) -> bool {
        e.lines.iter().any(|l| l.contains(text))
    }

    #[test]
    fn test_a_known_client_in_proxy_mode_gets_each_firmwares_file_and_its_script() {
        let (_d, c) = setup(&ALL_FILES, KNOWN);
        let e = run(&c, &[]);
        assert_eq!(e.refused, None, "{:#?}", e.lines);
        for line in [
            "matched: [clients.\"52:54:00:12:34:56\"]",
            "overlay persistent",
            "DHCP: proxy",
            "bios      firmware is offered undionly.kpxe",
            "uefi-x64  firmware is offered ipxe.efi",
            "uefi-http firmware is offered http://10.0.0.1:80/ipxe.efi",
            "arm64     firmware is offered ipxe-arm64.efi",
            "ipxe      firmware is offered tftp://10.0.0.1/pxeroot/52-54-00-12-34-56.ipxe",
            "kernel: vmlinuz",
            "#!ipxe",
            "pxeroot.export=52:54:00:12:34:56",
            "overlay: none yet",
            "verdict: it boots",
        ] {
            assert!(has(&e, line), "no {line:?} in {:#?}", e.lines);
        }
        // One firmware kind only; UEFI through port 4011 is said.
        let (_d, c) = setup(&ALL_FILES, &KNOWN.replace("mode = \"proxy\"", "mode = \"proxy\"\nuefi = \"via-4011\""));
        let e = run(&c, &[Firmware::UefiX64]);
        assert!(has(&e, "uefi-x64  firmware is offered ipxe.efi (in the ACK on port 4011)") && !has(&e, "bios"), "{:#?}", e.lines);
        // No HTTP: UEFI HTTP boot is not answered, the script fetches over TFTP.
        let (_d, c) = setup(&ALL_FILES, &format!("[http]\nenabled = false\n{KNOWN}"));
        let e = run(&c, &[Firmware::UefiHttp]);
        assert!(
            has(&e, "uefi-http firmware is not answered: HTTP is disabled") && has(&e, "kernel tftp://10.0.0.1/vmlinuz"),
            "{:#?}",
            e.lines
        );
    }

    #[test]
    fn test_unknown_clients_boot_or_are_refused_with_the_fix() {
        let boot = "[dhcp]\nmode = \"proxy\"\n[unknown_clients]\naction = \"boot\"\nimage = \"debian\"\n";
        let (_d, c) = setup(&ALL_FILES, boot);
        let e = run(&c, &[Firmware::Ipxe]);
        assert!(has(&e, "matched: [unknown_clients] action = \"boot\"") && has(&e, "overlay ephemeral"), "{:#?}", e.lines);
        assert_eq!(e.refused, None);
        let (_d, c) = setup(&ALL_FILES, "[dhcp]\nmode = \"proxy\"\n");
        let e = run(&c, &[]);
        let why = e.refused.unwrap();
        assert!(why.contains("add a [clients.\"52:54:00:12:34:56\"] table, or set unknown_clients.action = \"boot\""), "{why}");
    }

    #[test]
    fn test_full_mode_names_the_reserved_address_and_hostname() {
        let full = "[dhcp]\nmode = \"full\"\npool_start = \"10.0.0.100\"\npool_end = \"10.0.0.199\"\n\
                    [clients.\"52:54:00:12:34:56\"]\nimage = \"debian\"\naddress = \"10.0.0.50\"\nhostname = \"lab-07\"\n";
        let (_d, c) = setup(&ALL_FILES, full);
        let e = run(&c, &[Firmware::Bios]);
        for line in ["DHCP: full", "address: 10.0.0.50, reserved (pool 10.0.0.100-10.0.0.199)", "hostname: lab-07"] {
            assert!(has(&e, line), "no {line:?} in {:#?}", e.lines);
        }
        let (_d, c) = setup(&ALL_FILES, &full.replace("address = \"10.0.0.50\"\n", ""));
        assert!(has(&run(&c, &[Firmware::Bios]), "address: the next free one of its segment's pool (10.0.0.100-10.0.0.199"));
    }

    #[test]
    fn test_a_missing_boot_file_refuses_with_where_it_comes_from() {
        let (_d, c) = setup(&["vmlinuz", "initrd.img", "undionly.kpxe"], KNOWN);
        // BIOS firmware alone is fine; UEFI's file is missing.
        assert_eq!(run(&c, &[Firmware::Bios]).refused, None);
        let e = run(&c, &[Firmware::UefiX64]);
        let why = e.refused.clone().unwrap();
        assert!(why.contains("ipxe.efi is not in the boot directory") && why.contains("/usr/lib/ipxe/ipxe.efi"), "{why}");
        assert!(has(&e, "uefi-x64  firmware is offered ipxe.efi: NOT in the boot directory"), "{:#?}", e.lines);
        // The kernel missing refuses every firmware's boot.
        let (_d, c) = setup(&["initrd.img", "undionly.kpxe"], KNOWN);
        let why = run(&c, &[Firmware::Bios]).refused.unwrap();
        assert!(why.contains("images.debian.kernel: vmlinuz is not in"), "{why}");
        // An image without boot files gets no script.
        let text =
            "state_dir = \"state\"\n[pxe]\nserver_address = \"10.0.0.1\"\nboot_dir = \"boot\"\n[images.debian]\npath = \"base.img\"\n\
                    [clients.\"52:54:00:12:34:56\"]\nimage = \"debian\"\n";
        let (d, _) = setup(&ALL_FILES, "");
        let c = Config::parse(text, &d.path().join("pxeroot.toml")).unwrap();
        assert!(run(&c, &[Firmware::Ipxe]).refused.unwrap().contains("images.debian names no kernel and initrd"));
    }

    #[test]
    fn test_an_overlay_of_a_changed_base_is_refused_and_a_matching_one_is_not() {
        let (d, c) = setup(&ALL_FILES, KNOWN);
        let state = d.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("52-54-00-12-34-56.qcow2"), vec![0u8; 4096]).unwrap();
        let mac: Mac = MAC.parse().unwrap();
        let records = Records::open(state.clone());
        // The record the base makes now: it matches.
        let base = crate::storage::BaseImage::open(&d.path().join("base.img")).unwrap();
        let now = crate::storage::records::fingerprint(&base).unwrap();
        records.write_base(mac, &now).unwrap();
        records.record_boot(mac, "10.0.0.57".parse().unwrap()).unwrap();
        let e = run(&c, &[Firmware::Bios]);
        assert!(has(&e, "overlay: ") && has(&e, "(4096 bytes)") && has(&e, "base record: matches the base"), "{:#?}", e.lines);
        assert!(has(&e, "last boot from: 10.0.0.57 (its overlay opens only for that address)"), "{:#?}", e.lines);
        assert_eq!(e.refused, None);
        // The base changed since: refused, with the fix.
        records.write_base(mac, &BaseRecord { fingerprint: "0".repeat(32), ..now }).unwrap();
        let e = run(&c, &[Firmware::Bios]);
        let why = e.refused.clone().unwrap();
        assert!(why.contains("belongs to another base: delete it (its data is lost)"), "{why}");
        assert!(has(&e, &format!("fingerprint {}", "0".repeat(32))), "{:#?}", e.lines);
    }
}
