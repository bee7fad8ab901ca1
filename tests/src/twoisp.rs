//! The two-ISP world in network namespaces, built only from software we did not write:
//!
//! ```text
//!  laptop namespace                                  ISP namespace
//!  NetworkManager (real, private system bus)         Postfix smtpd 192.0.2.1:587    (ISP A)
//!  linkrelayd (private session bus)                    relays for 192.0.2.0/24, STARTTLS
//!  lr-a 192.0.2.2/24    gw 192.0.2.1   <-- veth -->  isp-a 192.0.2.1/24
//!  lr-b 198.51.100.2/24 gw 198.51.100.1 <-- veth --> isp-b 198.51.100.1/24
//!                                                    Postfix smtpd 198.51.100.1:587 (ISP B)
//!                                                      relays for 198.51.100.0/24 after
//!                                                      STARTTLS + AUTH (Dovecot SASL)
//!                                                    connectivity check 203.0.113.1:80 (python)
//!                                                    smtp-sink 127.0.0.1:2525 <- Postfix
//!                                                    [serve_discovery] dnsmasq and HTTPS
//!                                                      on 203.0.113.53, the laptop's DNS
//! ```
//!
//! Each relay refuses the other ISP's clients with Postfix's own "Relay access denied": a
//! laptop on ISP A reaches relay B (through ISP A's gateway) but B will not relay for it.
//! Addresses are from the documentation ranges and exist only inside these namespaces.
//!
//! Dropping a [`TwoIsp`] stops the agent, NetworkManager and Postfix, kills anything left in
//! the namespaces and deletes them; when the test is failing (panicking), or when
//! `LINKRELAY_TEST_LOGS` is set, it first prints the agent's, Postfix's and NetworkManager's
//! logs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::config::{Config, Link, Relay, User};
use crate::maildomain::{DomainServers, Site, autoconfig_xml};
use crate::netns::{self, NetNs};
use crate::postfix::{Delivered, Listener, PostfixRelays};
use crate::realnm::{Profile, RealNm};
use crate::world::{World, bin};

/// ISP A's relay (and gateway).
pub const RELAY_A: &str = "192.0.2.1";
/// The laptop's address on ISP A.
pub const LAPTOP_A: &str = "192.0.2.2";
/// ISP B's relay (and gateway).
pub const RELAY_B: &str = "198.51.100.1";
/// The laptop's address on ISP B.
pub const LAPTOP_B: &str = "198.51.100.2";
/// Where NetworkManager's connectivity check goes (served in the ISP namespace).
pub const CHECK_ADDR: &str = "203.0.113.1";
/// The submission port of both relays.
pub const SUBMISSION: u16 = 587;
/// ISP A's relay's host name, as it writes it in `Received:`.
pub const HOST_A: &str = "smtp.isp-a.example";
/// ISP B's relay's host name.
pub const HOST_B: &str = "smtp.isp-b.example";
/// Where [`TwoIsp::serve_discovery`] answers DNS and HTTPS (in the ISP namespace).
pub const DISCOVERY_ADDR: &str = "203.0.113.53";
/// What the connectivity check answers when the Internet is "reachable".
const ONLINE: &str = "linkrelay-online";

/// How long to wait for anything that should happen "now".
pub const WAIT: Duration = Duration::from_secs(20);

/// The whole world; see the module docs.
pub struct TwoIsp {
    /// The agent, its buses (NetworkManager is on `world.system`) and its home.
    pub world: World,
    /// NetworkManager in the laptop namespace.
    pub nm: RealNm,
    /// Postfix in the ISP namespace.
    pub relays: PostfixRelays,
    check_server: Child,
    check_dir: PathBuf,
    bin_dir: PathBuf,
    discovery: Option<DomainServers>,
    /// The CA bundle the agent and the CLI trust once [`TwoIsp::serve_discovery`] runs.
    trust: Option<PathBuf>,
    laptop: NetNs,
    isp: NetNs,
    dir: tempfile::TempDir,
}

impl TwoIsp {
    /// Builds the world (no link up, agent not started) and writes the agent's config
    /// ([`TwoIsp::config`]). Fails with a clear message when not root or when a package is
    /// missing.
    pub fn start() -> anyhow::Result<TwoIsp> {
        if let Some(why) = netns::unavailable() {
            bail!(
                "{why}. These tests create network namespaces and run NetworkManager and \
                 Postfix in them: run them as root (CI does, through scripts/test), or leave \
                 them out with: cargo nextest run --workspace -E 'not binary(realnet)'"
            );
        }
        if !Path::new("/usr/bin/python3").exists() {
            bail!("/usr/bin/python3 is missing: run scripts/install-test-deps");
        }
        let dir = tempfile::Builder::new()
            .prefix("linkrelay-twoisp-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;

        let isp = NetNs::create("isp")?;
        let laptop = NetNs::create("laptop")?;
        laptop.veth("lr-a", &isp, "isp-a")?;
        laptop.veth("lr-b", &isp, "isp-b")?;
        isp.ip(&format!("addr add {RELAY_A}/24 dev isp-a"))?;
        isp.ip(&format!("addr add {RELAY_B}/24 dev isp-b"))?;
        isp.ip(&format!("addr add {CHECK_ADDR}/32 dev lo"))?;
        isp.ip("link set isp-a up")?;
        isp.ip("link set isp-b up")?;

        let check_dir = dir.path().join("www");
        std::fs::create_dir_all(&check_dir)?;
        std::fs::write(check_dir.join("check"), ONLINE)?;
        let check_server = start_check_server(&isp, dir.path())?;

        let relays = PostfixRelays::start(
            &isp,
            &dir.path().join("isp"),
            &[
                Listener {
                    name: "isp-a".into(),
                    hostname: HOST_A.into(),
                    addr: RELAY_A.into(),
                    port: SUBMISSION,
                    network: "192.0.2.0/24".into(),
                    auth_user: None,
                },
                Listener {
                    name: "isp-b".into(),
                    hostname: HOST_B.into(),
                    addr: RELAY_B.into(),
                    port: SUBMISSION,
                    network: "198.51.100.0/24".into(),
                    auth_user: Some(("bob".into(), "secret-b".into())),
                },
            ],
        )?;

        let world = World::new()?;
        let nm = RealNm::start(
            &laptop,
            &world.system.address,
            &dir.path().join("nm"),
            &[
                Profile {
                    id: "ISP-A".into(),
                    interface: "lr-a".into(),
                    address: format!("{LAPTOP_A}/24"),
                    gateway: RELAY_A.into(),
                    route_metric: 100,
                },
                Profile {
                    id: "ISP-B".into(),
                    interface: "lr-b".into(),
                    address: format!("{LAPTOP_B}/24"),
                    gateway: RELAY_B.into(),
                    route_metric: 200,
                },
            ],
            &format!("http://{CHECK_ADDR}/check"),
            ONLINE,
        )?;

        // Mail clients find linkrelay under the name they call: sendmail.
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir)?;
        std::os::unix::fs::symlink(bin("linkrelay"), bin_dir.join("sendmail"))?;
        std::fs::write(dir.path().join("password-b"), "secret-b\n")?;

        let t = TwoIsp {
            world,
            nm,
            relays,
            check_server,
            check_dir,
            bin_dir,
            discovery: None,
            trust: None,
            laptop,
            isp,
            dir,
        };
        t.world.write_config(&t.config(true))?;
        Ok(t)
    }

    /// The agent's config: links ISP-A and ISP-B (metered: hold), relay A (STARTTLS) and relay
    /// B (STARTTLS + AUTH as bob), both trusting the test CA when `trust_ca`; one user "me".
    pub fn config(&self, trust_ca: bool) -> String {
        self.config_with(trust_ca, true)
    }

    /// [`TwoIsp::config`] without routes: user "me" has none until they are learnt.
    pub fn config_unrouted(&self) -> String {
        self.config_with(true, false)
    }

    fn config_with(&self, trust_ca: bool, routed: bool) -> String {
        let relay = |name: &str, host: &str| {
            let relay = Relay::new(name)
                .host(host)
                .port(SUBMISSION)
                .tls("starttls")
                .set("helo", "laptop.example")
                .timeout("10s");
            match trust_ca {
                true => relay.ca_file(&self.relays.ca.ca_pem),
                false => relay,
            }
        };
        let password = format!("cat {}", self.dir.path().join("password-b").display());
        Config::new()
            .agent("source", "networkmanager")
            .agent("debounce", "100ms")
            .link(Link::new("isp-a").id("ISP-A"))
            .link(Link::new("isp-b").id("ISP-B").set("metered", "hold"))
            .relay(relay("relay-a", RELAY_A))
            .relay(relay("relay-b", RELAY_B).password_command("bob", &password))
            .user(match routed {
                true => User::new("me")
                    .from(["*"])
                    .route("isp-a", ["relay-a"])
                    .route("isp-b", ["relay-b"]),
                false => User::new("me").from(["*"]),
            })
            .to_string()
    }

    /// Serves what `linkrelay setup` looks up, for both ISPs' domains, from the ISP namespace:
    /// isp-a.example by HTTPS autoconfig, isp-b.example by an RFC 6186 SRV record, and both
    /// relays' host names. The laptop namespace's DNS server is then this one, and the agent
    /// and [`TwoIsp::laptop_cli`] trust the web server's and the relays' test CAs as the
    /// system's roots (`SSL_CERT_FILE`), so that a relay block written by setup needs no
    /// `ca_file`. Call it before [`TwoIsp::start_agent`].
    pub fn serve_discovery(&mut self) -> anyhow::Result<()> {
        self.isp
            .ip(&format!("addr add {DISCOVERY_ADDR}/32 dev lo"))?;
        let site = Site::new()
            .host("autoconfig.isp-a.example", DISCOVERY_ADDR)
            .host(HOST_A, RELAY_A)
            .host(HOST_B, RELAY_B)
            .page(
                "https://autoconfig.isp-a.example/mail/config-v1.1.xml",
                &autoconfig_xml("isp-a.example", HOST_A, SUBMISSION, "STARTTLS", ""),
            )
            .srv("_submission._tcp.isp-b.example", HOST_B, SUBMISSION);
        let servers = DomainServers::start(
            &self.isp,
            DISCOVERY_ADDR,
            &self.dir.path().join("domains"),
            &site,
        )?;
        self.laptop.set_nameserver(DISCOVERY_ADDR)?;
        let trust = self.dir.path().join("trust.pem");
        std::fs::write(
            &trust,
            format!(
                "{}{}",
                std::fs::read_to_string(&self.relays.ca.ca_pem)?,
                std::fs::read_to_string(&servers.ca_pem)?
            ),
        )?;
        self.world
            .set_agent_env("SSL_CERT_FILE", &trust.display().to_string());
        self.discovery = Some(servers);
        self.trust = Some(trust);
        Ok(())
    }

    /// Runs `linkrelay ARGS` inside the laptop namespace, in the user's environment (and
    /// trusting the test CAs once [`TwoIsp::serve_discovery`] ran).
    pub fn laptop_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut cmd = self.laptop.command(bin("linkrelay"));
        self.world.env(&mut cmd);
        if let Some(trust) = &self.trust {
            cmd.env("SSL_CERT_FILE", trust);
        }
        Ok(cmd.args(args).stdin(Stdio::null()).output()?)
    }

    /// Starts linkrelayd inside the laptop namespace.
    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        let prefix = self.laptop.exec_prefix();
        self.world.start_agent_wrapped(&prefix, &[]).await
    }

    /// Makes the connectivity check answer like a captive portal (`true`) or like the
    /// Internet (`false`), and has NetworkManager check now. Returns NM's verdict.
    pub fn set_portal(&self, portal: bool) -> anyhow::Result<String> {
        let body = if portal {
            "<html>Please log in to use this hotspot</html>"
        } else {
            ONLINE
        };
        std::fs::write(self.check_dir.join("check"), body)?;
        self.nm.check_connectivity()
    }

    /// Stops the connectivity check's server (`true`: connections are refused, NM says
    /// "limited") or starts it again, and has NetworkManager check now. Returns NM's verdict.
    pub fn set_check_unreachable(&mut self, unreachable: bool) -> anyhow::Result<String> {
        // A refused connection fails the check at once (a dropped or ICMP-rejected one only
        // after NM's 20 s timeout).
        let _ = self.check_server.kill();
        let _ = self.check_server.wait();
        if !unreachable {
            self.check_server = start_check_server(&self.isp, self.dir.path())?;
        }
        self.nm.check_connectivity()
    }

    /// Takes the ISP's end of a link (`isp-a` or `isp-b`) down, or up again: the laptop's
    /// interface on that link loses (or regains) its carrier, as when the ISP's box goes off or
    /// a cable is pulled. NetworkManager sees only the carrier.
    pub fn set_isp_carrier(&self, isp_iface: &str, up: bool) -> anyhow::Result<()> {
        let relay = match isp_iface {
            "isp-a" => RELAY_A,
            "isp-b" => RELAY_B,
            other => bail!("no ISP link {other:?}"),
        };
        // Both relays are one Postfix, whose smtpd refuses to start (for either relay) while
        // one of its listening addresses is on no interface that is up: keep the relay's
        // address on the ISP's loopback too. The laptop still reaches it only through a link.
        let on_lo = self.isp.ip("addr show dev lo")?;
        if !on_lo.contains(&format!("{relay}/32")) {
            self.isp.ip(&format!("addr add {relay}/32 dev lo"))?;
        }
        let state = if up { "up" } else { "down" };
        self.isp.ip(&format!("link set {isp_iface} {state}"))?;
        Ok(())
    }

    /// A directory whose `sendmail` is linkrelay, to put first in a mail client's PATH or to
    /// name in its config.
    pub fn sendmail_path(&self) -> PathBuf {
        self.bin_dir.join("sendmail")
    }

    /// A command in the user's environment (buses, home, XDG dirs; `sendmail` first in PATH).
    pub fn user_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        self.world.env(&mut cmd);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", self.bin_dir.display()))
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8");
        cmd
    }

    /// Waits until Postfix passed on `count` messages with `subject`, and returns them.
    pub async fn wait_delivered(
        &self,
        subject: &str,
        count: usize,
    ) -> anyhow::Result<Vec<Delivered>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.relays.with_subject(subject);
            if got.len() >= count {
                return Ok(got);
            }
            if Instant::now() > deadline {
                bail!(
                    "Postfix passed on {} message(s) with subject {subject:?}, not {count}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the agent's route for user "me" satisfies `ok`.
    pub async fn wait_route(
        &self,
        what: &str,
        ok: impl Fn(&linkrelay_dbus::agent::RouteInfo) -> bool,
    ) -> anyhow::Result<linkrelay_dbus::agent::RouteInfo> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.world.route("me").await?;
            if let Some(r) = &r
                && ok(r)
            {
                return Ok(r.clone());
            }
            if Instant::now() > deadline {
                bail!("the route of user me never became {what}; last: {r:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything a person debugging a failure wants to read.
    pub fn logs(&self) -> String {
        format!(
            "===== linkrelayd =====\n{}\n===== Postfix =====\n{}\n===== NetworkManager =====\n{}\n===== connectivity check server =====\n{}\n{}",
            self.world.agent_log(),
            self.relays.log(),
            self.nm.log(),
            std::fs::read_to_string(self.dir.path().join("check-server.log")).unwrap_or_default(),
            self.discovery
                .as_ref()
                .map(|d| d.logs())
                .unwrap_or_default(),
        )
    }

    /// The world's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// NetworkManager's connectivity check server: Python's http.server in the ISP namespace,
/// serving `<dir>/www/check`, waited for until it accepts connections.
fn start_check_server(isp: &NetNs, dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("check-server.log"))?;
    let mut child = isp
        .command("/usr/bin/python3")
        .args(["-m", "http.server", "--bind", CHECK_ADDR, "--directory"])
        .arg(dir.join("www"))
        .arg("80")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the connectivity check server")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = isp.command("ss").arg("-ltnH").output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&format!("{CHECK_ADDR}:80 ")) {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the connectivity check server exited with {status}: {}",
                std::fs::read_to_string(dir.join("check-server.log")).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the connectivity check server never listened");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TwoIsp {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("LINKRELAY_TEST_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
        self.world.stop_agent();
        let _ = self.check_server.kill();
        let _ = self.check_server.wait();
        // The fields drop next: NetworkManager (SIGTERM), Postfix (postfix stop), then the
        // namespaces (whatever still runs in them is killed) and the files.
    }
}
