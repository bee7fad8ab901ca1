//! The real NetworkManager (Debian's package), run inside a test network namespace on a
//! private system bus, with keyfile profiles and every path in a temporary directory.
//!
//! What it takes:
//! - its own mount namespace (`ip netns exec` makes one) where `/run` is a fresh tmpfs with our
//!   directory bind-mounted on `/run/NetworkManager` (kept across restarts, as on a real
//!   machine, so a restarted NM re-assumes the connections that are up), and our directory on
//!   `/var/lib/NetworkManager`;
//! - `/sys` read-only: with it writable NM waits for udev forever and every device stays
//!   unmanaged; read-only, NM knows it is in a container and manages devices at once;
//! - keyfile profiles (mode 0600), `dns=none`, no polkit, no automatic profiles, and our veth
//!   devices marked managed;
//! - a connectivity check URI that the test serves in the peer namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::NetNs;
use crate::run::{run, text};

/// A keyfile profile for an ethernet (veth) link with a static address.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The connection's id ("ISP-A").
    pub id: String,
    /// The interface it binds to.
    pub interface: String,
    /// Address with prefix, e.g. "192.0.2.2/24".
    pub address: String,
    /// The default gateway.
    pub gateway: String,
    /// Route metric: the lower one wins when several links are up.
    pub route_metric: u32,
}

impl Profile {
    fn keyfile(&self, uuid: &str) -> String {
        format!(
            "[connection]
id={id}
uuid={uuid}
type=ethernet
interface-name={iface}
autoconnect=false

[ethernet]

[ipv4]
method=manual
address1={addr},{gw}
route-metric={metric}

[ipv6]
method=disabled
",
            id = self.id,
            iface = self.interface,
            addr = self.address,
            gw = self.gateway,
            metric = self.route_metric,
        )
    }
}

/// A running NetworkManager. Stopped (SIGTERM) on drop.
pub struct RealNm {
    dir: PathBuf,
    ns_prefix: Vec<String>,
    bus: String,
    child: Option<Child>,
    log: PathBuf,
}

impl RealNm {
    /// Writes the configuration and `profiles` into `dir` and starts NetworkManager in `ns`,
    /// on the system bus at `bus_address`. `check_uri` is the connectivity check URL and
    /// `check_response` the body that means "online".
    pub fn start(
        ns: &NetNs,
        bus_address: &str,
        dir: &Path,
        profiles: &[Profile],
        check_uri: &str,
        check_response: &str,
    ) -> anyhow::Result<RealNm> {
        for tool in ["/usr/sbin/NetworkManager", "/usr/bin/nmcli"] {
            if !Path::new(tool).exists() {
                bail!("{tool} is missing: run scripts/install-test-deps");
            }
        }
        let conns = dir.join("system-connections");
        for d in [
            "system-connections",
            "run",
            "lib",
            "conf.d",
            "system-conf.d",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::set_permissions(&conns, std::fs::Permissions::from_mode(0o700))?;
        for (i, p) in profiles.iter().enumerate() {
            let file = conns.join(format!("{}.nmconnection", p.id));
            let uuid = format!("6c1e1a2b-1f0e-4d5c-9a1b-{:012x}", i + 1);
            std::fs::write(&file, p.keyfile(&uuid))?;
            // NM ignores keyfiles that others can read.
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        }
        let ifaces: Vec<String> = profiles
            .iter()
            .map(|p| format!("interface-name:{}", p.interface))
            .collect();
        std::fs::write(
            dir.join("NetworkManager.conf"),
            format!(
                "[main]
plugins=keyfile
dns=none
rc-manager=unmanaged
hostname-mode=none
auth-polkit=false
no-auto-default=*

[keyfile]
path={conns}

[device-linkrelay-test]
match-device={ifaces}
managed=1

[connectivity]
enabled=true
uri={check_uri}
response={check_response}
interval=60

[logging]
level=INFO
",
                conns = conns.display(),
                ifaces = ifaces.join(","),
            ),
        )?;
        let d = dir.display();
        std::fs::write(
            dir.join("start.sh"),
            format!(
                "set -e
mount -t tmpfs linkrelay-test-run /run
mkdir -p /run/NetworkManager
mount --bind {d}/run /run/NetworkManager
mount --bind {d}/lib /var/lib/NetworkManager
mount -o remount,bind,ro /sys
exec /usr/sbin/NetworkManager --debug --config={d}/NetworkManager.conf \\
  --config-dir={d}/conf.d --system-config-dir={d}/system-conf.d \\
  --intern-config={d}/lib/NetworkManager-intern.conf \\
  --state-file={d}/lib/NetworkManager.state --pid-file={d}/run/NetworkManager.pid
"
            ),
        )?;
        // /var/lib/NetworkManager is where we bind-mount; the package creates it.
        if !Path::new("/var/lib/NetworkManager").is_dir() {
            bail!("/var/lib/NetworkManager is missing: run scripts/install-test-deps");
        }
        let mut nm = RealNm {
            dir: dir.to_path_buf(),
            ns_prefix: ns.exec_prefix(),
            bus: bus_address.to_string(),
            child: None,
            log: dir.join("NetworkManager.log"),
        };
        nm.launch()?;
        let devices: Vec<&str> = profiles.iter().map(|p| p.interface.as_str()).collect();
        nm.wait_devices_managed(&devices)?;
        Ok(nm)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("NetworkManager is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let (program, args) = self
            .ns_prefix
            .split_first()
            .context("empty namespace prefix")?;
        let child = Command::new(program)
            .args(args)
            .arg("sh")
            .arg(self.dir.join("start.sh"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting NetworkManager")?;
        self.child = Some(child);
        // Ready when it answers on the bus.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(out) = self.nmcli_output(&["-t", "-f", "RUNNING", "general"])
                && out.trim() == "running"
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                bail!(
                    "NetworkManager exited with {status}; its log:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "NetworkManager never answered on the bus; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_devices_managed(&self, devices: &[&str]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.nmcli_output(&["-t", "-f", "DEVICE,STATE", "device"])?;
            let ready = devices.iter().all(|d| {
                out.lines().any(|l| {
                    l.strip_prefix(d)
                        .and_then(|r| r.strip_prefix(':'))
                        .is_some_and(|state| {
                            !state.starts_with("unmanaged") && state != "unavailable"
                        })
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "NetworkManager never managed {devices:?}:\n{out}\nits log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn nmcli_output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = run(Command::new("nmcli")
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus))?;
        Ok(text(&out.stdout))
    }

    /// Runs `nmcli ARGS` against this NetworkManager and returns its output.
    pub fn nmcli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.nmcli_output(args)
            .with_context(|| format!("NetworkManager's log:\n{}", self.log()))
    }

    /// `nmcli connection up ID` (returns once NM says the connection is activated).
    pub fn up(&self, id: &str) -> anyhow::Result<()> {
        self.nmcli(&["connection", "up", id]).map(|_| ())
    }

    /// `nmcli connection down ID`.
    pub fn down(&self, id: &str) -> anyhow::Result<()> {
        self.nmcli(&["connection", "down", id]).map(|_| ())
    }

    /// Asks NM to check connectivity now; returns what it found ("full", "portal", ...).
    pub fn check_connectivity(&self) -> anyhow::Result<String> {
        Ok(self
            .nmcli(&["networking", "connectivity", "check"])?
            .trim()
            .to_string())
    }

    /// Stops NetworkManager with SIGTERM (as `systemctl stop` does) and waits for it. The
    /// links stay configured, as they do on a real machine.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid =
            rustix::process::Pid::from_raw(child.id() as i32).context("NetworkManager's pid")?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("NetworkManager ignored SIGTERM for 10 s; killed it")
    }

    /// Starts NetworkManager again after [`RealNm::stop`], with the same state.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.launch()
    }

    /// NetworkManager's log (stderr in debug mode).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RealNm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
