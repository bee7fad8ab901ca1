//! Private `dbus-daemon`s for tests.
//!
//! Each [`TestBus`] is its own `dbus-daemon --nofork` listening on a unix path socket in a fresh
//! temporary directory, with a generated configuration: a "system" bus is just a daemon whose
//! configuration says `<type>system</type>` (with an allow-all policy, so fake services such as
//! [`crate::nm::FakeNm`] may own their names), a "session" bus says `<type>session</type>`.
//! The machine's real buses are never touched.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The `dbus-daemon` binary the harness starts.
pub const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// How long [`TestBus::start`] waits for the daemon to print its address and accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which kind of bus a [`TestBus`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// A session bus (`<type>session</type>`): where the linkrelay agent serves its interface.
    Session,
    /// A system bus (`<type>system</type>`): where NetworkManager lives.
    System,
}

impl BusKind {
    /// The `<type>` of the daemon's configuration: "session" or "system".
    pub fn config_type(self) -> &'static str {
        match self {
            BusKind::Session => "session",
            BusKind::System => "system",
        }
    }

    /// The environment variable that points clients at a bus of this kind:
    /// `DBUS_SESSION_BUS_ADDRESS` or `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn env_var(self) -> &'static str {
        match self {
            BusKind::Session => "DBUS_SESSION_BUS_ADDRESS",
            BusKind::System => "DBUS_SYSTEM_BUS_ADDRESS",
        }
    }
}

/// A private `dbus-daemon`, killed and reaped on drop.
#[derive(Debug)]
pub struct TestBus {
    /// The address the daemon printed, e.g. `unix:path=/tmp/.tmpXXXX/bus,guid=...`; give it to
    /// [`zbus::connection::Builder::address`] or put it in [`TestBus::env_var`] of a child process.
    pub address: String,
    kind: BusKind,
    socket: PathBuf,
    child: Child,
    // Kept open so the daemon never writes into a closed pipe.
    _stdout: ChildStdout,
    // Dropped after the daemon is reaped (fields drop in declaration order, after `Drop::drop`).
    dir: tempfile::TempDir,
}

/// Extras for [`TestBus::start_with`]: D-Bus activation.
#[derive(Debug, Clone, Default)]
pub struct BusOptions {
    /// `<servicedir>`s: directories of `.service` files the daemon may start on demand
    /// (D-Bus activation with `Exec=`; there is no systemd on a test bus).
    pub service_dirs: Vec<PathBuf>,
    /// Environment of the daemon, which the services it starts inherit (HOME, XDG_* and the
    /// other bus's address, so that an activated agent lives in the test's world).
    pub env: Vec<(String, String)>,
}

impl TestBus {
    /// Start a private bus of `kind` and wait until it accepts connections.
    ///
    /// This is synchronous (it only waits for a local process for a few milliseconds), so it
    /// can be called from async tests and from plain ones.
    pub fn start(kind: BusKind) -> anyhow::Result<TestBus> {
        TestBus::start_with(kind, &BusOptions::default())
    }

    /// [`TestBus::start`] with activation directories and an environment for the daemon.
    pub fn start_with(kind: BusKind, options: &BusOptions) -> anyhow::Result<TestBus> {
        let dir = tempfile::Builder::new()
            .prefix("linkrelay-bus-")
            .tempdir()
            .context("creating a temporary directory for the bus")?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(&config, config_xml(kind, &socket, &options.service_dirs))
            .with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.path().join("dbus-daemon.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;

        let mut child = Command::new(DBUS_DAEMON)
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--nosyslog")
            .arg("--print-address")
            .arg(format!("--config-file={}", config.display()))
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {DBUS_DAEMON}"))?;

        let stdout = match child.stdout.take() {
            Some(stdout) => stdout,
            None => {
                kill_and_reap(&mut child);
                bail!("{DBUS_DAEMON} has no stdout pipe");
            }
        };
        // Read the address on a thread, so that a daemon that never prints it cannot hang us.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let result = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send((result, reader.into_inner()));
        });
        let (address, stdout) = match rx.recv_timeout(START_TIMEOUT) {
            Ok((Ok(line), stdout)) if !line.trim().is_empty() => (line.trim().to_owned(), stdout),
            Ok((Ok(_), _)) => {
                let log = read_log(&log_path);
                kill_and_reap(&mut child);
                bail!("{DBUS_DAEMON} exited without printing its address; its log:\n{log}");
            }
            Ok((Err(e), _)) => {
                kill_and_reap(&mut child);
                return Err(e).context("reading the address dbus-daemon printed");
            }
            Err(_) => {
                kill_and_reap(&mut child);
                bail!("{DBUS_DAEMON} printed no address within {START_TIMEOUT:?}");
            }
        };

        let bus = TestBus {
            address,
            kind,
            socket,
            child,
            _stdout: stdout,
            dir,
        };
        bus.wait_until_accepting()?;
        Ok(bus)
    }

    /// Start a private session bus.
    pub fn session() -> anyhow::Result<TestBus> {
        TestBus::start(BusKind::Session)
    }

    /// Start a private system bus.
    pub fn system() -> anyhow::Result<TestBus> {
        TestBus::start(BusKind::System)
    }

    /// The kind of this bus.
    pub fn kind(&self) -> BusKind {
        self.kind
    }

    /// The variable and value that point a child process at this bus, e.g.
    /// `("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=...")`, for `Command::env`.
    pub fn env_var(&self) -> (&'static str, &str) {
        (self.kind.env_var(), &self.address)
    }

    /// The unix socket the daemon listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory holding the socket, the configuration and the daemon's log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon wrote to stderr so far (warnings, policy denials).
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("dbus-daemon.log"))
    }

    /// A new client connection to this bus (a tokio runtime must be current).
    pub async fn connect(&self) -> anyhow::Result<zbus::Connection> {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .with_context(|| format!("connecting to the test bus at {}", self.address))
    }

    fn wait_until_accepting(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "the test bus never accepted a connection on {}; its log:\n{}",
                            self.socket.display(),
                            self.log()
                        )
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// The daemon configuration: one unix path socket, EXTERNAL auth, and a policy that lets any
/// local user own any name and send to and receive from anyone.
fn config_xml(kind: BusKind, socket: &Path, service_dirs: &[PathBuf]) -> String {
    let service_dirs: String = service_dirs
        .iter()
        .map(|d| {
            format!(
                "  <servicedir>{}</servicedir>\n",
                xml_escape(&d.display().to_string())
            )
        })
        .collect();
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
{service_dirs}  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#,
        kind = kind.config_type(),
        socket = xml_escape(&socket.display().to_string()),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn list_names(bus: &TestBus) -> Vec<String> {
        let conn = bus.connect().await.expect("connect");
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("DBus proxy");
        dbus.list_names()
            .await
            .expect("ListNames")
            .into_iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[tokio::test]
    async fn both_kinds_start_and_answer_list_names() {
        for kind in [BusKind::Session, BusKind::System] {
            let bus = TestBus::start(kind).expect("start bus");
            assert!(bus.address.starts_with("unix:path="), "{}", bus.address);
            assert!(bus.socket_path().starts_with(bus.dir()));
            let conn = bus.connect().await.expect("connect");
            let me = conn.unique_name().expect("unique name").to_string();
            let names = list_names(&bus).await;
            assert!(
                names.iter().any(|n| n == "org.freedesktop.DBus"),
                "{names:?}"
            );
            assert!(names.contains(&me), "{me} not in {names:?}");
            assert_eq!(bus.env_var().0, kind.env_var());
        }
    }

    #[tokio::test]
    async fn system_bus_lets_a_fake_service_own_a_name() {
        let bus = TestBus::system().expect("start bus");
        let service = bus.connect().await.expect("connect");
        service
            .request_name("org.freedesktop.NetworkManager")
            .await
            .expect("own NM's name on the private system bus");
        let names = list_names(&bus).await;
        assert!(
            names.iter().any(|n| n == "org.freedesktop.NetworkManager"),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn each_bus_is_private() {
        let a = TestBus::session().expect("bus a");
        let b = TestBus::session().expect("bus b");
        assert_ne!(a.address, b.address);
        let conn_a = a.connect().await.expect("connect a");
        conn_a
            .request_name("org.linkrelay.Test")
            .await
            .expect("own");
        let names_b = list_names(&b).await;
        assert!(!names_b.iter().any(|n| n == "org.linkrelay.Test"));
    }

    #[test]
    fn drop_kills_the_daemon_and_removes_its_directory() {
        let bus = TestBus::system().expect("start bus");
        let socket = bus.socket_path().to_owned();
        let dir = bus.dir().to_owned();
        let pid = bus.child.id();
        drop(bus);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(UnixStream::connect(&socket).is_err());
        // Reaped: no zombie left under our pid.
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_not_our_child(pid));
    }

    fn is_not_our_child(pid: u32) -> bool {
        // The pid may have been reused by an unrelated process; then it is not a dbus-daemon
        // zombie of ours.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        !stat.contains("(dbus-daemon) Z")
    }
}
