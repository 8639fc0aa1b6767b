//! The `pxeroot` binary: everything is in the library; `pxeroot::cli`
//! parses the arguments and dispatches.

fn main() -> std::process::ExitCode {
    pxeroot::cli::main()
}
