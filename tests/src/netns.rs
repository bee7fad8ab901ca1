//! Network namespaces for tests (needs root, as CI runs): a private network stack per test, with
//! veth pairs as uplinks, where the agent can follow the kernel's default route without
//! touching the machine's own.
//!
//! Names are unique per process and call (`lrt-<pid>-<n>`), so tests run in parallel by nextest
//! never meet. Dropping a [`NetNs`] kills what still runs inside it and deletes it, also when
//! the test failed; namespaces left by a test process that was killed are swept by the next
//! [`NetNs::new`].

use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// The `ip` binary.
pub const IP: &str = "/usr/sbin/ip";

/// The prefix of every namespace the harness makes.
const PREFIX: &str = "lrt-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace made for one test; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// Runs `ip ARGS`, failing with what it printed.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(IP)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {IP}"))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetNs {
    /// Makes a fresh namespace with its loopback up. Fails with a clear message when not root.
    pub fn new() -> anyhow::Result<NetNs> {
        if !rustix::process::geteuid().is_root() {
            bail!(
                "network-namespace tests need root (CAP_NET_ADMIN) to run `ip netns add`; CI runs as root"
            );
        }
        sweep_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS` (ARGS split on white space) and returns its output.
    pub fn ip(&self, args: &str) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend(args.split_whitespace());
        ip(&all)
    }

    /// Runs many `ip` commands (one per line, without the `ip`) in one `ip -batch` process,
    /// so the kernel announces their changes in one quick burst.
    pub fn ip_batch(&self, lines: &[String]) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = Command::new(IP)
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {IP} -batch"))?;
        let mut stdin = child.stdin.take().context("ip -batch stdin")?;
        stdin.write_all(lines.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`ip -batch` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Adds a veth pair `name` / `name-p` (both ends here, both up): `name` is the uplink
    /// the tests put addresses and routes on; setting `name-p` down takes its carrier away.
    pub fn add_uplink(&self, name: &str) -> anyhow::Result<()> {
        self.ip(&format!("link add {name} type veth peer name {name}-p"))?;
        self.ip(&format!("link set {name}-p up"))?;
        self.ip(&format!("link set {name} up"))?;
        Ok(())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(IP);
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens belong to the
    /// namespace (e.g. a listener on the namespace's own 127.0.0.1) and stay there after.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let thread = std::thread::spawn(move || -> anyhow::Result<T> {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .context("setns into the test namespace")?;
            Ok(f())
        });
        match thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the thread in namespace {} panicked", self.name),
        }
    }

    /// A TCP listener on the namespace's own `127.0.0.1`, on a free port (non-blocking, for
    /// tokio).
    pub fn loopback_listener(&self) -> anyhow::Result<std::net::TcpListener> {
        let listener = self.run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Kills what runs in namespace `name` and deletes it.
fn delete(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = ip(&["netns", "del", name]);
}

/// Deletes namespaces of ours whose test process is gone (a test killed by a timeout).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            delete(&name);
        }
    }
}
