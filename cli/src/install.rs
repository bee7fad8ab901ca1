//! `linkrelay install --user`: the systemd user unit and the D-Bus activation file, written
//! into the user's XDG directories with the real path of `linkrelayd`.
//!
//! - `$XDG_CONFIG_HOME/systemd/user/linkrelayd.service` (`~/.config/systemd/user/`): a
//!   `Type=notify` service with a watchdog; `systemctl --user enable --now linkrelayd` starts it
//!   now and at every login.
//! - `$XDG_DATA_HOME/dbus-1/services/org.linkrelay.Agent.service`
//!   (`~/.local/share/dbus-1/services/`): D-Bus activation, so the first `linkrelay` call (or
//!   `sendmail`) starts the agent. Under a systemd user manager the bus hands the start to the
//!   unit (`SystemdService=`); a bus without one runs `Exec=` itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The unit's file name.
pub const UNIT_NAME: &str = "linkrelayd.service";
/// The D-Bus service file's name (the bus name plus `.service`, as the spec asks).
pub const DBUS_SERVICE_NAME: &str = "org.linkrelay.Agent.service";
/// The watchdog timeout written into the unit; the agent pings at half of it.
pub const WATCHDOG_SEC: u32 = 30;

/// The two files and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The agent binary the files start.
    pub agent: PathBuf,
    /// Where the unit goes.
    pub unit_path: PathBuf,
    /// Its text.
    pub unit: String,
    /// Where the D-Bus service file goes.
    pub dbus_path: PathBuf,
    /// Its text.
    pub dbus: String,
}

/// Quotes `path` for a systemd `ExecStart=`: `%` and `$` would be specifiers and variables,
/// and a path with spaces or quotes goes in double quotes with C-style escapes.
pub fn systemd_exec_arg(path: &Path) -> anyhow::Result<String> {
    let text = plain_path(path)?;
    let escaped = text.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        Ok(format!(
            "\"{}\"",
            escaped.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    } else {
        Ok(escaped)
    }
}

/// Quotes `path` for a D-Bus service file's `Exec=` (shell-like quoting, no expansions).
pub fn dbus_exec_arg(path: &Path) -> anyhow::Result<String> {
    let text = plain_path(path)?;
    if text
        .chars()
        .any(|c| c.is_whitespace() || "\"'\\$`".contains(c))
    {
        Ok(format!("'{}'", text.replace('\'', r"'\''")))
    } else {
        Ok(text.to_owned())
    }
}

fn plain_path(path: &Path) -> anyhow::Result<&str> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
    if !path.is_absolute() {
        bail!("{text} is not an absolute path");
    }
    if text.chars().any(char::is_control) {
        bail!("{text:?} contains control characters; move linkrelayd to a plainer path");
    }
    Ok(text)
}

/// The systemd user unit for `agent`.
pub fn unit_text(agent: &Path) -> anyhow::Result<String> {
    let exec = systemd_exec_arg(agent)?;
    Ok(format!(
        "\
# Written by `linkrelay install --user`; running it again rewrites this file.
[Unit]
Description=linkrelay agent: sends your mail through the SMTP relay of the network link that is up
# `linkrelay man --dir ~/.local/share/man/man1` installs the man pages: man linkrelay
# The agent serves on the session bus.
After=dbus.socket
Requires=dbus.socket

[Service]
# READY=1 comes once org.linkrelay.Agent is claimed, so units ordered after this one (and
# D-Bus activation) see an agent that answers.
Type=notify
NotifyAccess=main
BusName=org.linkrelay.Agent
ExecStart={exec}
ExecReload=/bin/kill -HUP $MAINPID
# The agent pings from its event loop every {half} s; a loop stuck for {WATCHDOG_SEC} s is restarted.
WatchdogSec={WATCHDOG_SEC}
Restart=on-failure
RestartSec=5
# 75: another linkrelayd (another session bus) holds the outboxes; restarting would only
# find it again. The next D-Bus call starts this one once that one is gone.
RestartPreventExitStatus=75
# Outbox files and directories are private to the user.
UMask=0077

[Install]
WantedBy=default.target
",
        half = WATCHDOG_SEC / 2
    ))
}

/// The D-Bus session service file for `agent`.
pub fn dbus_service_text(agent: &Path) -> anyhow::Result<String> {
    let exec = dbus_exec_arg(agent)?;
    Ok(format!(
        "\
# Written by `linkrelay install --user`: the first call to org.linkrelay.Agent starts the agent.
# Under a systemd user manager the bus starts the unit (SystemdService=); without one it runs Exec=.
[D-BUS Service]
Name=org.linkrelay.Agent
Exec={exec}
SystemdService={UNIT_NAME}
"
    ))
}

/// Where `linkrelayd` is: `explicit`, else beside this executable, else on `PATH`.
pub fn find_agent(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir()
                .context("cannot read the current directory")?
                .join(p)
        };
        if !is_executable(&p) {
            bail!("{} is not an executable file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot tell where this linkrelay is")?;
    let beside = exe.parent().map(|d| d.join("linkrelayd"));
    if let Some(p) = beside.filter(|p| is_executable(p)) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("linkrelayd");
            if p.is_absolute() && is_executable(&p) {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find linkrelayd beside {} or on PATH; install it (`cargo install --path agent`) or pass --agent PATH",
        exe.display()
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `$var` if absolute, else `$HOME/fallback`.
fn xdg(var: &str, fallback: &str) -> anyhow::Result<PathBuf> {
    let abs = |v: &str| {
        std::env::var_os(v)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    abs(var)
        .or_else(|| abs("HOME").map(|h| h.join(fallback)))
        .with_context(|| format!("neither {var} nor HOME is set to an absolute path"))
}

/// What `install --user` would write for `agent`.
pub fn plan(agent: PathBuf) -> anyhow::Result<Plan> {
    let unit_path = xdg("XDG_CONFIG_HOME", ".config")?
        .join("systemd/user")
        .join(UNIT_NAME);
    let dbus_path = xdg("XDG_DATA_HOME", ".local/share")?
        .join("dbus-1/services")
        .join(DBUS_SERVICE_NAME);
    Ok(Plan {
        unit: unit_text(&agent)?,
        dbus: dbus_service_text(&agent)?,
        agent,
        unit_path,
        dbus_path,
    })
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// It did not exist.
    Created,
    /// It existed with other content.
    Updated,
    /// It already said this.
    Unchanged,
}

/// Writes `text` to `path` atomically (temporary file, fsync, rename), creating directories.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<Written> {
    let before = std::fs::read_to_string(path).ok();
    if before.as_deref() == Some(text) {
        return Ok(Written::Unchanged);
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".linkrelay-install-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Readable by the user's service managers; nothing secret in it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("cannot set the mode of {}", tmp.path().display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot put {} in place", path.display()))?;
    Ok(if before.is_some() {
        Written::Updated
    } else {
        Written::Created
    })
}

/// Removes `path` if it is there; whether it was.
pub fn remove_file(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// What to tell the user after writing the files.
pub fn next_steps(plan: &Plan) -> String {
    format!(
        "\
Next:
  systemctl --user daemon-reload
  systemctl --user enable --now {UNIT_NAME}    # start it now and at every login
  linkrelay status
Without systemd the first `linkrelay` call starts {agent} through D-Bus activation.
Logs: journalctl --user -u linkrelayd
",
        agent = plan.agent.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_written_as_they_are() {
        let p = Path::new("/home/alice/.cargo/bin/linkrelayd");
        assert_eq!(
            systemd_exec_arg(p).unwrap(),
            "/home/alice/.cargo/bin/linkrelayd"
        );
        assert_eq!(
            dbus_exec_arg(p).unwrap(),
            "/home/alice/.cargo/bin/linkrelayd"
        );
    }

    #[test]
    fn odd_paths_are_quoted_for_each_parser() {
        let p = Path::new("/home/a b/100%/$HOME/linkrelayd");
        assert_eq!(
            systemd_exec_arg(p).unwrap(),
            "\"/home/a b/100%%/$$HOME/linkrelayd\""
        );
        assert_eq!(
            dbus_exec_arg(p).unwrap(),
            "'/home/a b/100%/$HOME/linkrelayd'"
        );
        let q = Path::new("/opt/it's/linkrelayd");
        assert_eq!(dbus_exec_arg(q).unwrap(), r"'/opt/it'\''s/linkrelayd'");
        assert_eq!(systemd_exec_arg(q).unwrap(), "\"/opt/it's/linkrelayd\"");
    }

    #[test]
    fn relative_and_control_character_paths_are_refused() {
        assert!(systemd_exec_arg(Path::new("bin/linkrelayd")).is_err());
        assert!(dbus_exec_arg(Path::new("/a\nExecStartPre=/bin/evil")).is_err());
        assert!(unit_text(Path::new("/a\nb")).is_err());
    }

    #[test]
    fn both_files_name_the_agent_and_each_other() {
        let agent = Path::new("/usr/local/bin/linkrelayd");
        let unit = unit_text(agent).unwrap();
        assert!(unit.contains("\nType=notify\n"));
        assert!(unit.contains("\nExecStart=/usr/local/bin/linkrelayd\n"));
        assert!(unit.contains("\nWatchdogSec=30\n"));
        assert!(unit.contains("\nBusName=org.linkrelay.Agent\n"));
        // An agent that gives way to another is not restarted in a loop.
        assert!(unit.contains("\nRestartPreventExitStatus=75\n"));
        let dbus = dbus_service_text(agent).unwrap();
        assert!(dbus.contains("\nName=org.linkrelay.Agent\n"));
        assert!(dbus.contains("\nExec=/usr/local/bin/linkrelayd\n"));
        assert!(dbus.contains(&format!("\nSystemdService={UNIT_NAME}\n")));
    }

    #[test]
    fn writing_twice_reports_unchanged_then_updated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/x.service");
        assert_eq!(write_file(&p, "one").unwrap(), Written::Created);
        assert_eq!(write_file(&p, "one").unwrap(), Written::Unchanged);
        assert_eq!(write_file(&p, "two").unwrap(), Written::Updated);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(remove_file(&p).unwrap());
        assert!(!remove_file(&p).unwrap());
    }
}
