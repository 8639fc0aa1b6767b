//! The Vagrant lab (Vagrantfile): CI cannot boot libvirt VMs here, and
//! `vagrant validate` reads only the Vagrantfile's Ruby. This checks what
//! the server VM would run: its provisioning script, rendered from the
//! Vagrantfile without Vagrant (tests/tools/vagrant_provision.rb), names
//! files the repository has, and the pxeroot.toml it writes passes
//! `pxeroot check-config`, with each client's name.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn server_script() -> String {
    require("ruby");
    let root = env!("CARGO_MANIFEST_DIR");
    stdout(Command::new("ruby").arg(format!("{root}/tests/tools/vagrant_provision.rb")).arg(format!("{root}/Vagrantfile")).arg("server"))
}

#[test]
fn test_the_lab_servers_script_uses_files_that_exist_and_writes_a_valid_config() {
    let script = server_script();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Every repository path the script runs or copies is there (target/
    // is built by the script itself).
    let paths: Vec<&str> =
        script.split_whitespace().filter(|w| ["images/", "config/", "tests/"].iter().any(|p| w.starts_with(p))).collect();
    assert!(paths.len() >= 3, "{script}");
    for p in paths {
        assert!(root.join(p).exists(), "the lab's script uses {p}, which is not in the repository");
    }
    // The config it writes, with its paths moved into a temporary directory.
    let start = script.find("<<CONF\n").expect("the config heredoc") + "<<CONF\n".len();
    let end = start + script[start..].find("\nCONF").expect("its end");
    let d = tempfile::tempdir().unwrap();
    let srv = d.path().join("srv");
    let toml = script[start..end]
        .replace("/srv/pxeroot", &srv.display().to_string())
        .replace("/var/lib/pxeroot", &d.path().join("state").display().to_string())
        .replace("$iface", "eth1");
    std::fs::create_dir_all(srv.join("boot")).unwrap();
    std::fs::create_dir_all(srv.join("images")).unwrap();
    make_raw_base(&srv.join("images/root.img"), 1 << 20, 3);
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(srv.join("boot").join(f), b"boot file").unwrap();
    }
    let cfg = d.path().join("pxeroot.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let out = stdout(Command::new(bin()).args(["check-config", "--config"]).arg(&cfg));
    assert!(out.contains("OK"), "{out}\n{toml}");
    // Both clients are configured, each with its VM's name as hostname.
    for (name, mac) in [("client1", "52:54:00:77:00:01"), ("client2", "52:54:00:77:00:02")] {
        assert!(out.contains(&format!("client {mac}: image root")), "{out}");
        assert!(toml.contains(&format!("[clients.\"{mac}\"]\nimage = \"root\"\nhostname = \"{name}\"")), "{toml}");
    }
}
