//! A real Secret Service for tests: GNOME Keyring's daemon (`gnome-keyring-daemon
//! --foreground --unlock --components=secrets`) on a private session bus, with its keyrings in
//! a temporary home, created and unlocked with a test password. Items are stored with
//! libsecret's `secret-tool`, as a user would. It needs no desktop: no display, no PAM.
//!
//! Killed and reaped on drop.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bus::TestBus;

/// The daemon's binary.
pub const GNOME_KEYRING_DAEMON: &str = "/usr/bin/gnome-keyring-daemon";
/// libsecret's command line tool.
pub const SECRET_TOOL: &str = "/usr/bin/secret-tool";

/// A running gnome-keyring-daemon serving `org.freedesktop.secrets` on a test bus.
#[derive(Debug)]
pub struct Keyring {
    child: Child,
    bus_address: String,
    home: PathBuf,
    _dir: tempfile::TempDir,
}

impl Keyring {
    /// Starts the daemon on `bus` and waits until it owns `org.freedesktop.secrets`; its
    /// `login` keyring is created unlocked.
    pub async fn start(bus: &TestBus) -> anyhow::Result<Keyring> {
        let dir = tempfile::Builder::new()
            .prefix("linkrelay-keyring-")
            .tempdir()?;
        let home = dir.path().to_path_buf();
        let runtime = home.join("run");
        std::fs::create_dir_all(&runtime)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut cmd = Command::new(GNOME_KEYRING_DAEMON);
        cmd.args(["--foreground", "--unlock", "--components=secrets"]);
        env(&mut cmd, &bus.address, &home);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {GNOME_KEYRING_DAEMON} (scripts/install-test-deps installs it)")
            })?;
        // --unlock reads the keyring password from stdin, up to its end.
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(b"keyring-test-password")?;
        }
        let keyring = Keyring {
            child,
            bus_address: bus.address.clone(),
            home,
            _dir: dir,
        };
        let conn = bus.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let name = zbus::names::BusName::try_from("org.freedesktop.secrets")?;
        while !dbus.name_has_owner(name.clone()).await? {
            if Instant::now() > deadline {
                bail!("gnome-keyring-daemon did not claim org.freedesktop.secrets");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(keyring)
    }

    /// Stores `secret` under `attributes` with `secret-tool store`, as a user would.
    pub fn store(
        &self,
        label: &str,
        attributes: &[(&str, &str)],
        secret: &str,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new(SECRET_TOOL);
        cmd.arg("store").arg(format!("--label={label}"));
        for (k, v) in attributes {
            cmd.arg(k).arg(v);
        }
        env(&mut cmd, &self.bus_address, &self.home);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running secret-tool")?;
        child
            .stdin
            .take()
            .context("secret-tool stdin")?
            .write_all(secret.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "secret-tool store failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// What `secret-tool lookup ATTRIBUTES` prints (the secret), as a user would check it.
    /// `attributes`: pairs, from an array or a map.
    pub fn lookup<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        &self,
        attributes: impl IntoIterator<Item = (K, V)>,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new(SECRET_TOOL);
        cmd.arg("lookup");
        for (k, v) in attributes {
            cmd.arg(k).arg(v);
        }
        env(&mut cmd, &self.bus_address, &self.home);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running secret-tool")?;
        if !out.status.success() {
            bail!(
                "secret-tool lookup found nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Locks every collection (as the screen locker or `Lock` would), through the Secret
    /// Service API.
    pub async fn lock_all(&self) -> anyhow::Result<()> {
        let conn = zbus::connection::Builder::address(self.bus_address.as_str())
            .build()
            .await?;
        let collections: zbus::OwnedVariant = conn
            .call_method(
                Some("org.freedesktop.secrets"),
                "/org/freedesktop/secrets",
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.Secret.Service", "Collections"),
            )
            .await?
            .body()
            .deserialize()?;
        let paths: Vec<zbus::OwnedObjectPath> = collections.try_into()?;
        conn.call_method(
            Some("org.freedesktop.secrets"),
            "/org/freedesktop/secrets",
            Some("org.freedesktop.Secret.Service"),
            "Lock",
            &(paths,),
        )
        .await?;
        Ok(())
    }

    /// The daemon's home (its keyrings are under `data/keyrings`).
    pub fn home(&self) -> &Path {
        &self.home
    }
}

fn env(cmd: &mut Command, bus_address: &str, home: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("DBUS_SESSION_BUS_ADDRESS", bus_address);
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
