//! pxeroot: a network boot appliance for diskless machines.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.
#![forbid(unsafe_code)]

pub mod bootfiles;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dhcp;
pub mod explain;
pub mod http;
pub mod initramfs;
pub mod ipxe;
pub mod listen;
pub mod mac;
pub mod nbd;
pub mod ra;
pub mod statefile;
pub mod storage;
pub mod tftp;
