//! A whole private world for one end-to-end test: a session bus (where the agent serves), a
//! "system" bus (where the NM-shaped service lives), a home directory with config and data, the
//! real `linkrelayd` as a child process, and the real `linkrelay` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use linkrelay_dbus::agent::{AGENT_BUS_NAME, AgentProxy, RouteInfo};

use crate::bus::{BusKind, TestBus};
use crate::netns::NetNs;
use crate::run::text;

/// Where cargo put the workspace's binaries: next to the test executable's `deps/` folder.
/// `LINKRELAY_BIN_DIR` overrides it.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LINKRELAY_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of a workspace binary (`linkrelayd`, `linkrelay`).
///
/// `cargo test`/`nextest` do not build other packages' binaries, so a test could silently run an
/// old agent. Unless `LINKRELAY_BIN_DIR` is set, this panics when the binary is missing or older
/// than any source file of the crates it is built from.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if std::env::var_os("LINKRELAY_BIN_DIR").is_none() {
        let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let newest = newest_source(name);
        if built.is_none() || newest.is_some_and(|n| built.is_some_and(|b| b < n)) {
            panic!(
                "{} is missing or older than its sources: run `cargo build --workspace --bins` \
                 first (scripts/test does)",
                path.display()
            );
        }
    }
    path
}

/// The newest modification time among the sources binary `name` is built from: `.rs`, `.toml`
/// (manifests, the embedded starter config) and `.xml` files, leaving out unit-test files (`tests.rs`, `*_tests.rs`), which cargo does not
/// link into the binary.
fn newest_source(name: &str) -> Option<std::time::SystemTime> {
    let own = if name == "linkrelayd" { "agent" } else { "cli" };
    let root = repo_root();
    let mut newest = None;
    let mut stack: Vec<PathBuf> = [own, "config", "dbus", "outbox"]
        .iter()
        .map(|c| root.join(c))
        .collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let file = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let counts = (file.ends_with(".rs") && !file.ends_with("tests.rs"))
                || file.ends_with(".toml")
                || file.ends_with(".xml");
            if counts && let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(t));
            }
        }
    }
    newest
}

/// The repository's root (for examples/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// One test's world. Dropping it stops the agent and both buses and removes the files.
pub struct World {
    /// Private session bus.
    pub session: TestBus,
    /// Private system bus.
    pub system: TestBus,
    /// `$XDG_CONFIG_HOME/linkrelay/config.toml`.
    pub config_path: PathBuf,
    /// `$XDG_DATA_HOME/linkrelay`.
    pub data_dir: PathBuf,
    home: PathBuf,
    agent: Option<Child>,
    agent_prefix: Vec<String>,
    agent_env: Vec<(String, String)>,
    log_path: PathBuf,
    // Last: removed after everything above stopped.
    dir: tempfile::TempDir,
}

impl World {
    /// Starts both buses and lays out an empty home.
    pub fn new() -> anyhow::Result<World> {
        let dir = tempfile::Builder::new()
            .prefix("linkrelay-world-")
            .tempdir()?;
        let home = dir.path().join("home");
        let config_path = home.join(".config/linkrelay/config.toml");
        let data_dir = home.join(".local/share/linkrelay");
        std::fs::create_dir_all(config_path.parent().context("config dir")?)?;
        // $XDG_RUNTIME_DIR, private as a login's is (the listener's socket goes there).
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime)?;
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        Ok(World {
            session: TestBus::start(BusKind::Session)?,
            system: TestBus::start(BusKind::System)?,
            config_path,
            data_dir,
            log_path: dir.path().join("linkrelayd.log"),
            home,
            agent: None,
            agent_prefix: Vec::new(),
            agent_env: Vec::new(),
            dir,
        })
    }

    /// The world's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `$HOME` of the world.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `$XDG_RUNTIME_DIR` of the world (0700).
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The submission listener's unix socket: `$XDG_RUNTIME_DIR/linkrelay/submission.sock`.
    pub fn submission_socket(&self) -> PathBuf {
        self.runtime_dir().join("linkrelay/submission.sock")
    }

    /// The environment [`World::env`] gives a command, as pairs (for a bus daemon that starts
    /// activated services in this world).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("HOME".into(), s(&self.home)),
            ("USER".into(), "tester".into()),
            ("XDG_CONFIG_HOME".into(), s(&self.home.join(".config"))),
            ("XDG_DATA_HOME".into(), s(&self.home.join(".local/share"))),
            ("XDG_RUNTIME_DIR".into(), s(&self.runtime_dir())),
            (
                "DBUS_SESSION_BUS_ADDRESS".into(),
                self.session.address.clone(),
            ),
            (
                "DBUS_SYSTEM_BUS_ADDRESS".into(),
                self.system.address.clone(),
            ),
        ]
    }

    /// Writes the config file, readable by its owner only (as a config with credentials
    /// must be).
    pub fn write_config(&self, text: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&self.config_path, text)
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        std::fs::set_permissions(&self.config_path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", self.config_path.display()))
    }

    /// Points a command at this world: buses, home, XDG dirs.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("USER", "tester")
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .env("DBUS_SESSION_BUS_ADDRESS", &self.session.address)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.system.address);
    }

    /// A `linkrelay` command in this world.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin("linkrelay"));
        self.env(&mut cmd);
        cmd
    }

    /// Runs `linkrelay ARGS` and returns its output.
    pub fn run_cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.cli().args(args).stdin(Stdio::null()).output()?)
    }

    /// Runs `linkrelay sendmail ARGS` with `message` on stdin.
    pub fn sendmail(&self, args: &[&str], message: &str) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = self
            .cli()
            .arg("sendmail")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(message.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Runs `linkrelay sendmail ARGS` with a generated message of about `body_len` bytes
    /// streamed to its stdin (headers `From: me@example.org`, `To: you@example.org`,
    /// `Subject: big`, then lines of 76 `x`), and returns its output and its peak resident
    /// memory in KiB: the kernel's figure for that one process (`getrusage` of the only
    /// child of a python3 that runs it), not a sample that could miss the peak.
    pub fn sendmail_peak(&self, args: &[&str], body_len: usize) -> anyhow::Result<(Output, u64)> {
        use std::io::Write;
        const MEASURE: &str = "import resource, subprocess, sys\n\
            r = subprocess.run(sys.argv[1:])\n\
            print('peak-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
            sys.exit(r.returncode)\n";
        let mut cmd = Command::new("python3");
        cmd.arg("-c")
            .arg(MEASURE)
            .arg(bin("linkrelay"))
            .arg("sendmail");
        self.env(&mut cmd);
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting python3 (the tests need it)")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            stdin.write_all(b"From: me@example.org\nTo: you@example.org\nSubject: big\n\n")?;
            let line = [b"x".repeat(76), b"\n".to_vec()].concat();
            let block = line.repeat(1024);
            let mut left = body_len;
            while left > 0 {
                let n = left.min(block.len());
                stdin.write_all(&block[..n])?;
                left -= n;
            }
            Ok(())
        });
        let out = child.wait_with_output()?;
        // A sendmail that refuses the message early may close its stdin: not our error.
        let _ = writer.join();
        let text = String::from_utf8_lossy(&out.stdout);
        let peak = text
            .lines()
            .find_map(|l| l.strip_prefix("peak-kib "))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no peak in {text:?}"))?;
        Ok((out, peak))
    }

    /// Queues a simple message from `from` to `to` with `subject`, asserting success.
    pub fn send(&self, from: &str, to: &str, subject: &str) -> anyhow::Result<()> {
        let msg = format!(
            "From: {from}\nTo: {to}\nSubject: {subject}\n\nHello from the {subject} test.\n"
        );
        let out = self.sendmail(&["-t", "-i"], &msg)?;
        if !out.status.success() {
            bail!(
                "sendmail failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs the agent under this command prefix from now on, e.g. `ip netns exec NS` (the
    /// agent's pid is still the child's: such prefixes exec the program).
    pub fn set_agent_prefix(&mut self, prefix: Vec<String>) {
        self.agent_prefix = prefix;
    }

    /// Sets an extra environment variable for the agent (e.g. `RUST_LOG`), after the world's.
    pub fn set_agent_env(&mut self, name: &str, value: &str) {
        self.agent_env.push((name.to_owned(), value.to_owned()));
    }

    /// Starts `linkrelayd` and waits until it owns its bus name.
    ///
    /// It runs in the test's own network namespace: with source "auto" and no NetworkManager
    /// it would follow this machine's default route (see [`World::start_agent_in`]).
    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        self.start_agent_with(&[]).await
    }

    /// Starts `linkrelayd EXTRA_ARGS` and waits until it owns its bus name.
    pub async fn start_agent_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.start_agent_env(extra, &[]).await
    }

    /// Starts `linkrelayd EXTRA_ARGS` with extra environment variables and waits until it owns
    /// its bus name.
    pub async fn start_agent_env(
        &mut self,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let cmd = match self.agent_prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin("linkrelayd"));
                cmd
            }
            None => Command::new(bin("linkrelayd")),
        };
        self.start_agent_cmd(cmd, extra, env).await
    }

    /// Starts `linkrelayd EXTRA_ARGS` inside network namespace `ns` (`ip netns exec`), where it
    /// sees only the namespace's links and routes; the buses are unix path sockets, reachable
    /// from any namespace. Waits until it owns its bus name.
    pub async fn start_agent_in(&mut self, ns: &NetNs, extra: &[&str]) -> anyhow::Result<()> {
        self.start_agent_cmd(ns.command(bin("linkrelayd")), extra, &[])
            .await
    }

    async fn start_agent_cmd(
        &mut self,
        mut cmd: Command,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        if self.agent.is_some() {
            bail!("the agent is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        self.env(&mut cmd);
        cmd.args(extra)
            .env("RUST_LOG", "debug,zbus=info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .envs(self.agent_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin("linkrelayd").display()))?;
        let conn = self.session.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let name = zbus::names::BusName::try_from(AGENT_BUS_NAME)?;
            if dbus.name_has_owner(name).await? {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("linkrelayd exited with {status}:\n{}", self.agent_log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("linkrelayd did not claim its name:\n{}", self.agent_log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.agent = Some(child);
        Ok(())
    }

    /// Starts `WRAPPER... linkrelayd EXTRA_ARGS` and waits until it owns its bus name. The
    /// wrapper must exec the agent in place (e.g. `ip netns exec NAME`, to run it inside a
    /// network namespace), so that stopping the child stops the agent.
    pub async fn start_agent_wrapped(
        &mut self,
        wrapper: &[String],
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let Some((program, args)) = wrapper.split_first() else {
            bail!("start_agent_wrapped needs a wrapper command");
        };
        let mut cmd = Command::new(program);
        cmd.args(args).arg(bin("linkrelayd"));
        self.start_agent_cmd(cmd, extra, &[]).await
    }

    /// Runs `linkrelayd ARGS` to completion (for start-up failures) and returns its output.
    pub fn run_agent_once(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(bin("linkrelayd"));
        self.env(&mut cmd);
        cmd.args(args).env("NO_COLOR", "1").stdin(Stdio::null());
        Ok(cmd.output()?)
    }

    /// Kills the agent with SIGKILL (a crash) and reaps it.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits for it.
    pub fn stop_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGHUP to the agent (reload).
    pub fn hup_agent(&self) {
        if let Some(child) = &self.agent {
            let _ = Command::new("kill")
                .arg("-HUP")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// The running agent's process id.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// The file the agent's stderr goes to (created by the first start).
    pub fn agent_log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the agent logged so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A proxy to the agent over the private session bus.
    pub async fn agent(&self) -> anyhow::Result<AgentProxy<'static>> {
        let conn = self.session.connect().await?;
        Ok(AgentProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?)
    }

    /// The route of `user` as the agent publishes it.
    pub async fn route(&self, user: &str) -> anyhow::Result<Option<RouteInfo>> {
        let routes = self.agent().await?.routes().await?;
        Ok(routes.into_iter().find(|r| r.user == user))
    }

    /// Waits until the agent publishes a route for `user` that satisfies `ok`.
    pub async fn wait_route(
        &self,
        user: &str,
        what: &str,
        ok: impl Fn(&RouteInfo) -> bool,
    ) -> anyhow::Result<RouteInfo> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(r) = self.route(user).await?
                && ok(&r)
            {
                return Ok(r);
            } else {
                last = self.route(user).await?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "route of {user} never became {what}; last: {last:?}\nagent log:\n{}",
            self.agent_log()
        )
    }

    /// Waits (up to 10 s) until `folder` of `user`'s outbox holds `n` entries, and returns
    /// them: with an agent running, `linkrelay sendmail` hands mail over through `incoming/`
    /// and the agent moves it into `queue/` a moment later.
    pub async fn wait_entries(&self, user: &str, folder: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.outbox_entries(user, folder);
            if v.len() == n || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Files in `<data_dir>/<user>/<folder>/` (message directories), sorted.
    pub fn outbox_entries(&self, user: &str, folder: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data_dir.join(user).join(folder))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

/// `linkrelay ARGS --json`, parsed. Panics (failing the test) with linkrelay's stderr and the
/// agent's log when it fails or prints something that is not JSON.
pub fn cli_json(world: &World, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = world.run_cli(&all).expect("linkrelay runs");
    assert!(
        out.status.success(),
        "linkrelay {args:?} failed: {}\n{}",
        text(&out.stderr),
        world.agent_log()
    );
    serde_json::from_slice(&out.stdout).expect("linkrelay prints JSON")
}

/// The repository's example config with its relays pointed at local test relays (plain SMTP on
/// loopback; `relay-b` keeps its login, with the password from a `password_command`), and the
/// link source pinned to NetworkManager.
pub fn example_config_for(relay_a: u16, relay_b: u16) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(repo_root().join("examples/config.toml"))?;
    let text = text
        .replace(
            "host = \"smtp.isp-a.example\"",
            &format!("host = \"127.0.0.1\"\nport = {relay_a}\ntimeout = \"5s\""),
        )
        .replace(
            "host = \"smtp.isp-b.example\"\nport = 587",
            &format!("host = \"127.0.0.1\"\nport = {relay_b}\ntimeout = \"5s\""),
        )
        .replace("tls = \"starttls\"", "tls = \"none\"")
        .replace(
            "password_secret = { service = \"smtp\", username = \"bob\" }",
            "password_command = \"echo secret-b\"",
        )
        .replace("debounce = \"300ms\"", "debounce = \"50ms\"")
        // The seed scenario plays NetworkManager (and its restarts); with "auto" the agent would
        // fall back to this machine's own routes while the NM-shaped service is away.
        .replace("source = \"auto\"", "source = \"networkmanager\"");
    if !text.contains(&format!("port = {relay_b}"))
        || !text.contains(&format!("port = {relay_a}"))
        || !text.contains("source = \"networkmanager\"")
        || !text.contains("password_command = \"echo secret-b\"")
    {
        bail!("examples/config.toml changed shape; update example_config_for");
    }
    Ok(text)
}
