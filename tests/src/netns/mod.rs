//! Network namespaces for tests (root only, as CI runs): a private network stack per test, with
//! veth links, where the agent, NetworkManager or a relay can run without touching the
//! machine's own network.
//!
//! Every namespace is named `lrt-<pid>-<n>-<role>`: unique per process and call, so tests run
//! in parallel never meet, and a later run can tell the namespaces of a test process that died
//! (SIGKILL, a timeout) from those of a live one and remove them ([`sweep_stale`], called by
//! [`NetNs::create`]). Dropping a [`NetNs`] stops what still runs inside it (TERM, then KILL:
//! a namespace outlives `ip netns del` while a process lives in it) and deletes it, also when
//! the test failed.
//!
//! - [`NetNs`]: one namespace, with uplinks ([`NetNs::add_uplink`]) or veth pairs to another
//!   ([`NetNs::veth`]);
//! - [`pair`]: [`pair::NetnsPair`], two namespaces joined by a veth pair, for a relay that is
//!   not on loopback.

pub mod pair;

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::run::{run, run_with_input, text};

/// The `ip` binary (iproute2).
pub const IP: &str = "/usr/sbin/ip";

/// Where `ip netns exec` finds a namespace's own files for /etc.
const ETC_NETNS: &str = "/etc/netns";

/// The prefix of every namespace the harness makes.
const PREFIX: &str = "lrt-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS` and returns what it printed; the error says what failed and why.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    Ok(text(&run(Command::new(IP).args(args))?.stdout))
}

/// A command that runs `program` inside namespace `name` (`ip netns exec NAME program`), for
/// what outlives the [`NetNs`] borrow (a daemon's stop command).
pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(IP);
    cmd.args(["netns", "exec", name]).arg(program);
    cmd
}

/// Why this machine cannot make network namespaces, if it cannot: not root, or `ip` missing.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "network-namespace tests need root (CAP_NET_ADMIN) to run `ip netns add`; CI runs \
             as root"
                .into(),
        );
    }
    if !Path::new(IP).exists() {
        return Some(format!(
            "{IP} (iproute2) is missing: run scripts/install-test-deps"
        ));
    }
    None
}

/// A network namespace made for one test; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes a fresh namespace with its loopback up (for a test that needs only one).
    pub fn new() -> anyhow::Result<NetNs> {
        NetNs::create("test")
    }

    /// Makes a fresh namespace for `role` (a short word: "isp", "laptop") with its loopback
    /// up. Fails with a clear message when not root.
    pub fn create(role: &str) -> anyhow::Result<NetNs> {
        if let Some(why) = unavailable() {
            bail!("{why}");
        }
        sweep_stale();
        let name = format!(
            "{PREFIX}{}-{}-{role}",
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
        let input = lines.join("\n") + "\n";
        run_with_input(
            Command::new(IP).args(["-n", &self.name, "-batch", "-"]),
            input.as_bytes(),
        )?;
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

    /// Adds a veth pair: `here` in this namespace, `there` in `peer` (both down).
    pub fn veth(&self, here: &str, peer: &NetNs, there: &str) -> anyhow::Result<()> {
        ip(&[
            "link", "add", here, "netns", &self.name, "type", "veth", "peer", "name", there,
            "netns", &peer.name,
        ])?;
        Ok(())
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// The words to put before a program to run it in this namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        [IP, "netns", "exec", &self.name].map(String::from).to_vec()
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

    /// Gives the namespace its own `/etc/resolv.conf`: `ip netns exec` mounts
    /// `/etc/netns/NAME/resolv.conf` over it for every program it starts afterwards (the
    /// directory goes with the namespace).
    pub fn set_nameserver(&self, ip: &str) -> anyhow::Result<()> {
        let dir = Path::new(ETC_NETNS).join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {ip}\n"))
            .with_context(|| format!("writing {}/resolv.conf", dir.display()))
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
        remove(&self.name);
    }
}

/// The pids of the processes inside namespace `name`.
fn pids_in(name: &str) -> Vec<String> {
    ip(&["netns", "pids", name])
        .map(|out| out.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Stops what still runs in namespace `name` (TERM, then KILL, each given two seconds) and
/// deletes it.
fn remove(name: &str) {
    for signal in ["-TERM", "-KILL"] {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        let _ = run(Command::new("kill").arg(signal).args(&pids));
        for _ in 0..100 {
            if pids_in(name).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = ip(&["netns", "del", name]);
    let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(name));
}

/// Removes the namespaces left behind by test processes that no longer run.
pub fn sweep_stale() {
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
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&name);
        }
    }
}
