//! Helpers for integration tests: start the real `pxeroot` binary, find the
//! real peer tools, make base images, and a minimal blocking NBD client used
//! only as a load generator (the judges are qemu-img, qemu-io, nbdinfo,
//! nbdcopy and fio).
#![allow(dead_code)]

pub mod boot;
pub mod netns;
pub mod pcap;
pub mod qemu;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nbd_wire::client::{parse_greeting, parse_info_export, OptionReplyHeader};
use nbd_wire::consts::*;
use nbd_wire::handshake::{ClientOption, InfoRequest};
use nbd_wire::transmission::SimpleReply;
use nbd_wire::{Command as Cmd, Request};

/// Fail (never skip) when a peer tool is missing: CI installs them all.
pub fn require(tool: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success());
    assert!(found.unwrap_or(false), "{tool} is not installed: run the README's test command, which installs every peer tool");
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pxeroot"))
}

/// Run a command, return its output; panic with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command that must exit by itself within `limit` (killed and
/// failed otherwise); its output, whatever its status.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().map(|s| s.is_none()).unwrap_or(false) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().ok();
            panic!("{cmd:?} still ran after {limit:?}: {:?}", out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// Below Linux's ephemeral range (32768-60999): no socket that binds port 0
/// (a TFTP transfer's, a client's) can take a port picked here between
/// its pick and the daemon's bind.
const TEST_PORTS: std::ops::Range<u16> = 20000..32768;

/// A loopback port free for TCP and UDP, outside the ephemeral range, and
/// never handed out before in this process: two tests running at once
/// cannot both be given one port before either daemon binds it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Spread the processes' picks: seeded by the PID and the clock.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(std::process::id()) << 32 | u64::from(nanos) | 1;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = TEST_PORTS.start + (x % u64::from(TEST_PORTS.end - TEST_PORTS.start)) as u16;
        if !given.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no rand crate.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn make_raw_base(path: &Path, size: usize, seed: u64) {
    std::fs::write(path, pattern(seed, size)).expect("write base");
}

pub fn sha256(path: &Path) -> String {
    stdout(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap_or_default().to_string()
}

/// A running `pxeroot` daemon, stopped (SIGKILL) when dropped.
/// The real `pxeroot` binary, started by a test: on loopback, or in a
/// test's network namespace (the boot tests' server); its log kept in a
/// file; killed when dropped.
pub struct Server {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
    /// The namespace and address it listens at, when not on loopback.
    netns: Option<(String, String)>,
}

impl Server {
    /// `pxeroot nbd --base BASE --state-dir STATE` on a free loopback port.
    pub fn adhoc(base: &Path, state: &Path, extra: &[&str]) -> Server {
        Server::adhoc_with_env(base, state, extra, &[])
    }

    /// The same with extra environment variables (e.g. an LD_PRELOAD).
    pub fn adhoc_with_env(base: &Path, state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "nbd".into(),
            "--base".into(),
            base.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Server::start(&args, port, state, env)
    }

    /// `pxeroot serve --config FILE`; the config must listen on `port`.
    pub fn with_config(config: &Path, port: u16, logdir: &Path) -> Server {
        Server::start(&["serve".into(), "--config".into(), config.display().to_string()], port, logdir, &[])
    }

    fn start(args: &[String], port: u16, logdir: &Path, env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(logdir).expect("log dir");
        let log = logdir.join(format!("pxeroot-{port}.log"));
        Server::spawn(Command::new(bin()), args, port, &log, env, None)
    }

    /// `pxeroot ARGS` in `ns`, its log appended to `log`, ready once its
    /// NBD port answers at `ip`:`port` inside the namespace.
    pub fn in_netns(ns: &netns::Netns, args: &[String], ip: &str, port: u16, log: &Path) -> Server {
        Server::spawn(ns.command(&bin()), args, port, log, &[], Some((ns.name.clone(), ip.to_string())))
    }

    fn spawn(mut c: Command, args: &[String], port: u16, log: &Path, env: &[(&str, &str)], netns: Option<(String, String)>) -> Server {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let child = c
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start pxeroot");
        let mut s = Server { child: Some(child), port, log: log.to_path_buf(), netns };
        s.wait_ready();
        s
    }

    /// Whether the NBD port answers (inside the namespace, for one there).
    fn listening(&self) -> bool {
        match &self.netns {
            None => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            Some((name, ip)) => Command::new("ip")
                .args(["netns", "exec", name, "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/{}", self.port)])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    /// Its process ID, for a signal.
    pub fn pid(&self) -> nix::unistd::Pid {
        // Never 0: a signal to PID 0 would reach the test's own process group.
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("a running server").id() as i32)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.listening() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("pxeroot exited early ({status}):\n{}", self.log_text());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("pxeroot did not start listening:\n{}", self.log_text());
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, export)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("pxeroot did not stop within 30 s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal blocking NBD client (simple replies only, like the kernel's).
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    pub size: u64,
    pub flags: u16,
    next_cookie: u64,
}

#[derive(Debug)]
pub struct HandshakeRefused {
    pub reply_type: u32,
    pub message: String,
}

impl Client {
    pub fn connect(port: u16, export: &str) -> Result<Client, HandshakeRefused> {
        Client::connect_from(port, export, None)
    }

    /// Connect from a chosen loopback source address (e.g. 127.0.0.2).
    pub fn connect_from(port: u16, export: &str, source: Option<std::net::Ipv4Addr>) -> Result<Client, HandshakeRefused> {
        let mut s = match source {
            None => TcpStream::connect(("127.0.0.1", port)).expect("connect"),
            Some(src) => {
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
                sock.bind(&std::net::SocketAddr::from((src, 0)).into()).expect("bind source");
                sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()).expect("connect");
                sock.into()
            }
        };
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut g = [0u8; 18];
        s.read_exact(&mut g).expect("greeting");
        parse_greeting(&g).expect("valid greeting").expect("complete");
        s.write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes()).expect("flags");
        let mut opt = Vec::new();
        ClientOption::Go { name: export.into(), requests: vec![InfoRequest::BlockSize] }.encode(&mut opt);
        s.write_all(&opt).expect("go");
        let (mut size, mut flags) = (0, 0);
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).expect("option reply");
            let (hdr, _) = OptionReplyHeader::parse(&h).expect("valid reply").expect("complete");
            let mut data = vec![0u8; hdr.length as usize];
            s.read_exact(&mut data).expect("reply data");
            if hdr.is_error() {
                return Err(HandshakeRefused { reply_type: hdr.reply_type, message: String::from_utf8_lossy(&data).into() });
            }
            if let Ok(Some((sz, fl))) = parse_info_export(&data) {
                size = sz;
                flags = fl;
            }
            if hdr.reply_type == REP_ACK {
                break;
            }
        }
        Ok(Client { stream: s, size, flags, next_cookie: 1 })
    }

    /// Send a request (with payload for writes) without waiting; returns its cookie.
    pub fn send(&mut self, command: Cmd, flags: u16, offset: u64, length: u32, payload: &[u8]) -> std::io::Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let r = Request { flags, command, cookie, offset, length };
        let mut buf = r.encode().to_vec();
        buf.extend_from_slice(payload);
        self.stream.write_all(&buf)?;
        Ok(cookie)
    }

    /// Read one simple reply (and `data_len` bytes of data if it succeeded).
    pub fn recv(&mut self, data_len: usize) -> std::io::Result<(u64, u32, Vec<u8>)> {
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h)?;
        let (r, _) =
            SimpleReply::parse(&h).map_err(|e| std::io::Error::other(e.to_string()))?.ok_or_else(|| std::io::Error::other("short"))?;
        let mut data = Vec::new();
        if r.error == 0 && data_len > 0 {
            data = vec![0u8; data_len];
            self.stream.read_exact(&mut data)?;
        }
        Ok((r.cookie, r.error, data))
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.send(Cmd::Write, 0, offset, data.len() as u32, data).expect("send");
        self.recv(0).expect("write reply").1
    }

    pub fn read(&mut self, offset: u64, len: u32) -> (u32, Vec<u8>) {
        self.send(Cmd::Read, 0, offset, len, &[]).expect("send");
        let (_, e, d) = self.recv(len as usize).expect("read reply");
        (e, d)
    }

    pub fn flush(&mut self) -> u32 {
        self.send(Cmd::Flush, 0, 0, 0, &[]).expect("send");
        self.recv(0).expect("flush reply").1
    }

    pub fn disconnect(mut self) {
        let _ = self.send(Cmd::Disc, 0, 0, 0, &[]);
    }
}

/// The boot-file servers' fixture in `d`: `boot/debian/vmlinuz` (8 MiB,
/// pattern 2) and `initrd.zst` (1 MiB, pattern 3), a symlink `boot/escape`
/// out of the boot directory and `secret.txt` beside it (for traversal
/// checks), and a 1 MiB raw base `base.img`. Returns the boot directory.
pub fn boot_files_fixture(d: &Path) -> PathBuf {
    let boot = d.join("boot");
    std::fs::create_dir_all(boot.join("debian")).unwrap();
    std::fs::write(boot.join("debian/vmlinuz"), pattern(2, 8 << 20)).unwrap();
    std::fs::write(boot.join("debian/initrd.zst"), pattern(3, 1 << 20)).unwrap();
    std::os::unix::fs::symlink("/", boot.join("escape")).unwrap();
    std::fs::write(d.join("secret.txt"), "SECRET-OUTSIDE-BOOT-DIR").unwrap();
    make_raw_base(&d.join("base.img"), 1 << 20, 4);
    boot
}
