//! The config file's shape, as serde reads it. Every table refuses unknown
//! keys, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::dhcp::decide::UefiStrategy;
use crate::storage::registry::OverlayPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub state_dir: PathBuf,
    pub nbd: Option<Nbd>,
    #[serde(default)]
    pub images: BTreeMap<String, Image>,
    #[serde(default)]
    pub clients: BTreeMap<String, Client>,
    pub unknown_clients: Option<Unknown>,
    pub default_export: Option<String>,
    pub pxe: Option<Pxe>,
    pub tftp: Option<Tftp>,
    pub dhcp: Option<Dhcp>,
    pub http: Option<Http>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp {
    pub mode: Option<DhcpMode>,
    pub interface: Option<String>,
    pub uefi: Option<UefiStrategy>,
    pub bios_file: Option<String>,
    pub uefi_x64_file: Option<String>,
    pub uefi_arm64_file: Option<String>,
    pub ipv6_router_advertisements: Option<bool>,
    pub pool_start: Option<String>,
    pub pool_end: Option<String>,
    pub netmask: Option<String>,
    pub router: Option<String>,
    pub dns: Option<Vec<String>>,
    pub domain: Option<String>,
    pub search: Option<Vec<String>>,
    pub ntp: Option<Vec<String>>,
    pub mtu: Option<u32>,
    pub lease_seconds: Option<u64>,
    pub uefi_by_class: Option<BTreeMap<String, UefiStrategy>>,
    /// Full mode: pools of segments behind DHCP relays, besides the one of
    /// the keys above.
    pub pools: Option<Vec<Pool>>,
}

/// `dhcp.mode`.
#[derive(Debug, Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    Off,
    /// Beside the site's DHCP server.
    #[default]
    Proxy,
    /// The only DHCP server: pools, leases, reservations.
    Full,
}

/// `pxe.boot_files_over`.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http,
    Tftp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub start: Option<String>,
    pub end: Option<String>,
    pub netmask: Option<String>,
    pub router: Option<String>,
    pub dns: Option<Vec<String>>,
    pub domain: Option<String>,
    pub search: Option<Vec<String>>,
    pub ntp: Option<Vec<String>>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pxe {
    pub server_address: String,
    pub boot_dir: PathBuf,
    pub attach: Option<crate::ipxe::Attach>,
    pub boot_files_over: Option<Transport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tftp {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub listen: Option<String>,
    /// Client address or prefix ("10.0.0.7", "10.0.0.0/24") -> largest blksize.
    pub blksize_caps: Option<BTreeMap<String, u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nbd {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub listen: Option<Vec<String>>,
    pub require_boot_address: Option<bool>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub path: PathBuf,
    pub description: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub partition: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub image: String,
    pub policy: Option<OverlayPolicy>,
    /// Full-DHCP mode: this client's reserved address.
    pub address: Option<String>,
    /// Full-DHCP mode: this client's name (option 12), which pxeroot-init
    /// makes the kernel's hostname.
    pub hostname: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum UnknownAction {
    Refuse,
    Boot,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unknown {
    pub action: UnknownAction,
    pub image: Option<String>,
    pub policy: Option<OverlayPolicy>,
}
