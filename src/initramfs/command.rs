//! `pxeroot initramfs` as a command: find the static init, build, and
//! print what went in (modules, firmware, what this kernel lacks).

use std::path::PathBuf;

use super::{build, firmware_package, Compression, InitramfsError, Nic, Options};

/// Where `boot/pxeroot-init/build-static` leaves the static init, relative
/// to the workspace (musl first: it is the smaller build).
const INIT_CANDIDATES: &[&str] =
    &["target/x86_64-unknown-linux-musl/init/pxeroot-init", "target/x86_64-unknown-linux-gnu/init/pxeroot-init"];

/// `pxeroot initramfs`: build, then print what went in.
pub fn run(
    modules_dir: PathBuf,
    output: PathBuf,
    extra_modules: Vec<String>,
    nics: Vec<Nic>,
    compression: Compression,
    init: Option<PathBuf>,
    firmware_dir: PathBuf,
) -> Result<(), InitramfsError> {
    let init = match init {
        Some(p) => p,
        None => {
            // Next to this binary's target directory, or the current directory.
            let exe_root = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()));
            let roots: Vec<PathBuf> = exe_root.into_iter().chain(std::iter::once(PathBuf::from("."))).collect();
            roots.iter().flat_map(|r| INIT_CANDIDATES.iter().map(move |c| r.join(c))).find(|p| p.is_file()).ok_or(InitramfsError::NoInit)?
        }
    };
    println!("building {} from {} (init: {})", output.display(), modules_dir.display(), init.display());
    let r = build(&Options {
        modules_dir,
        firmware_dir: firmware_dir.clone(),
        output: output.clone(),
        extra_modules,
        nics,
        compression,
        init,
    })?;
    for (m, size) in &r.modules {
        println!("  module {m:<24} {size:>9} bytes");
    }
    for (f, size) in &r.firmware {
        println!("  firmware {f:<22} {size:>9} bytes");
    }
    for (m, n) in &r.firmware_missing {
        println!(
            "  ({m} names {n} firmware files, none under {}: most of its NICs come up without, those that need one do not; install {})",
            firmware_dir.display(),
            firmware_package(m)
        );
    }
    for m in &r.skipped {
        println!("  (no {m} in this kernel: skipped)");
    }
    println!(
        "{}: {} modules, init {} bytes, cpio {} bytes, written {} bytes ({:.2} MB, {})",
        output.display(),
        r.modules.len(),
        r.init_size,
        r.cpio_size,
        r.output_size,
        r.output_size as f64 / 1e6,
        r.compression.name()
    );
    Ok(())
}
