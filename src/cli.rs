//! The command line: clap's parsing and one dispatch to the code that
//! does each subcommand (the daemon, the config summary, the initramfs
//! builder). The binary's edge: the one place errors become `anyhow`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::daemon::{self, Daemon};
use crate::storage::registry::OverlayPolicy;

#[derive(Parser)]
#[command(name = "pxeroot", version, about = "Network boot appliance for diskless machines")]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service the configuration enables.
    ///
    /// SIGTERM or SIGINT: finish in-flight requests, flush every overlay,
    /// exit. SIGHUP: re-read the file's client table ([clients],
    /// [unknown_clients]); other changes wait for a restart.
    Serve {
        /// The TOML configuration (every key: config/pxeroot.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print what it sets up.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// What a client gets if it boots now, and why: the table that matched,
    /// its image and policy, the boot file per firmware, its address (full
    /// mode), the script, its overlay and base record, and whether it would
    /// be refused, with the fix. Reads the config and the state directory;
    /// no daemon needed.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's MAC (":" or "-", any case).
        mac: String,
        /// Only these firmware kinds (comma-separated; default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        arch: Vec<crate::explain::Firmware>,
    },
    /// Serve one base image over NBD with a copy-on-write overlay per MAC,
    /// no configuration file needed. Export names: a MAC opens that client's
    /// overlay; the image name (or the empty name) reads the base.
    Nbd {
        /// Base image (raw or qcow2), opened read-only.
        #[arg(long)]
        base: PathBuf,
        /// Directory for the overlays.
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:10809")]
        listen: SocketAddr,
        #[arg(long, value_enum, default_value = "persistent")]
        policy: OverlayPolicy,
        /// Export name of the read-only base (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
    },
    /// Build the initramfs: pxeroot-init as /init plus the kernel modules
    /// for NBD, common NICs and the root filesystem, with dependencies.
    Initramfs {
        /// A /lib/modules/<release> tree (from the host or an unpacked kernel package).
        #[arg(long)]
        kernel_modules: PathBuf,
        #[arg(long, short)]
        output: PathBuf,
        /// Extra modules, comma-separated (e.g. xfs,btrfs).
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
        /// NIC drivers to include, comma-separated (default: virtio, e1000,
        /// e1000e, igb, r8169). Fewer drivers make a smaller initramfs that
        /// unpacks faster; igc and tg3 are there to add.
        #[arg(long, value_enum, value_delimiter = ',')]
        nics: Vec<crate::initramfs::Nic>,
        /// How to compress the archive (auto: the fastest the kernel unpacks).
        #[arg(long, value_enum, default_value = "auto")]
        compress: crate::initramfs::Compression,
        /// The static pxeroot-init binary (default: built by boot/pxeroot-init/build-static).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Where the drivers' firmware files are (r8169's rtl_nic/*, tg3's
        /// tigon/*): those there go in; a NIC that needs one it cannot find
        /// may not come up.
        #[arg(long, default_value = "/lib/firmware")]
        firmware_dir: PathBuf,
    },
}

/// Parse the arguments, set up logging, run the subcommand; errors are
/// printed with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pxeroot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let c = Config::load(&config)?;
            daemon::run_blocking(Daemon::from_config(&config, c))?;
        }
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            for line in crate::config::summary::summary(&config, &c) {
                println!("{line}");
            }
        }
        Command::Explain { config, mac, arch } => {
            let c = Config::load(&config)?;
            let mac: crate::mac::Mac = mac.parse().map_err(|e| anyhow::anyhow!("{mac:?}: {e}"))?;
            let facts = crate::explain::gather(&c, mac);
            for line in crate::explain::explain(&c, mac, &arch, &facts).lines {
                println!("{line}");
            }
        }
        Command::Nbd { base, state_dir, listen, policy, name } => {
            daemon::run_blocking(Daemon::single_image(&base, state_dir, listen, policy, name))?;
        }
        Command::Initramfs { kernel_modules, output, modules, nics, compress, init, firmware_dir } => {
            crate::initramfs::command::run(kernel_modules, output, modules, nics, compress, init, firmware_dir)?;
        }
    }
    Ok(())
}
