//! Network namespaces for tests, made with `ip netns` (root only).
//!
//! A [`NetNs`] is named `lr-test-<pid>-<n>-<role>`, so that a later test run can tell the
//! namespaces of a test process that died (SIGKILL, a timeout) from those of a live one and
//! remove them ([`sweep_stale`]). Dropping a [`NetNs`] kills every process still inside it (a
//! namespace outlives `ip netns del` while a process lives in it) and deletes it.
//!
//! This is the realnet suite's helper (role-named namespaces with veth pairs between them);
//! the netlink tests use [`crate::netns`]. Merging the two is a known clean-up.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const PREFIX: &str = "lr-test-";

/// Why this machine cannot run namespace tests, if it cannot: not root, or `ip` missing.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "these tests need root: they create network namespaces and run NetworkManager and \
             Postfix in them. Run them as root (CI does, through scripts/test), or leave them \
             out with: cargo nextest run --workspace -E 'not binary(realnet)'"
                .into(),
        );
    }
    if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        return Some(
            "the `ip` command (iproute2) is missing: run scripts/install-test-deps".into(),
        );
    }
    None
}

/// Runs a command and fails with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// One network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace for `role` (a short word: "isp", "laptop") with its loopback up.
    pub fn create(role: &str) -> anyhow::Result<NetNs> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The words to put before a program to run it in this namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Adds a veth pair: `here` in this namespace, `there` in `peer`.
    pub fn veth(&self, here: &str, peer: &NetNs, there: &str) -> anyhow::Result<()> {
        ip(&[
            "link", "add", here, "netns", &self.name, "type", "veth", "peer", "name", there,
            "netns", &peer.name,
        ])?;
        Ok(())
    }

    /// Pids of the processes inside this namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

fn pids_in(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills what still runs in namespace `name` (TERM, then KILL) and deletes it.
fn remove(name: &str) {
    for signal in ["-TERM", "-KILL"] {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        let mut kill = Command::new("kill");
        kill.arg(signal);
        for p in &pids {
            kill.arg(p.to_string());
        }
        let _ = kill.stdout(Stdio::null()).stderr(Stdio::null()).status();
        for _ in 0..100 {
            if pids_in(name).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the namespaces left behind by test processes that no longer run.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            remove(&name);
        }
    }
}
