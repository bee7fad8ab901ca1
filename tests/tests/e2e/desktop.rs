//! The agent as a desktop service: `linkrelay install --user` and its files, D-Bus activation,
//! sd_notify readiness and watchdog, journald-style logs, the panel status line, completions
//! and man pages.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use linkrelay_dbus::agent::AGENT_BUS_NAME;
use linkrelay_tests::bus::{BusKind, BusOptions, TestBus};
use linkrelay_tests::run::text;
use linkrelay_tests::world::{World, bin, cli_json};

use crate::util::seed;

fn unit_path(w: &World) -> PathBuf {
    w.home().join(".config/systemd/user/linkrelayd.service")
}

fn dbus_service_path(w: &World) -> PathBuf {
    w.home()
        .join(".local/share/dbus-1/services/org.linkrelay.Agent.service")
}

/// `key=value` lines of one `[section]` of an ini-style file (systemd units and D-Bus service
/// files share the syntax), in order; fails on anything that is neither.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}"));
        if current == section {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn install(w: &World) -> String {
    let out = w.run_cli(&["install", "--user"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn install_writes_a_unit_and_an_activation_file_that_start_this_linkrelayd() {
    let w = World::new().unwrap();
    let said = install(&w);
    let agent = bin("linkrelayd");
    let unit = std::fs::read_to_string(unit_path(&w)).expect("unit written");
    let dbus = std::fs::read_to_string(dbus_service_path(&w)).expect("service file written");
    assert!(
        said.contains(&format!("wrote {}", unit_path(&w).display())),
        "{said}"
    );
    assert!(
        said.contains(&format!("wrote {}", dbus_service_path(&w).display())),
        "{said}"
    );
    assert!(said.contains("systemctl --user daemon-reload"), "{said}");
    assert!(
        said.contains("systemctl --user enable --now linkrelayd.service"),
        "{said}"
    );

    let service = ini_section(&unit, "Service");
    assert_eq!(get(&service, "Type"), Some("notify"));
    assert_eq!(get(&service, "ExecStart"), Some(agent.to_str().unwrap()));
    assert_eq!(get(&service, "WatchdogSec"), Some("30"));
    assert_eq!(get(&service, "BusName"), Some(AGENT_BUS_NAME));
    assert_eq!(
        get(&ini_section(&unit, "Install"), "WantedBy"),
        Some("default.target")
    );
    let activation = ini_section(&dbus, "D-BUS Service");
    assert_eq!(get(&activation, "Name"), Some(AGENT_BUS_NAME));
    assert_eq!(get(&activation, "Exec"), Some(agent.to_str().unwrap()));
    assert_eq!(
        get(&activation, "SystemdService"),
        Some("linkrelayd.service")
    );

    // systemd itself finds nothing wrong with the unit (it also checks ExecStart= exists).
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let runtime = tempfile::tempdir().unwrap();
        let out = Command::new("/usr/bin/systemd-analyze")
            .args(["--user", "verify"])
            .arg(unit_path(&w))
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env("HOME", w.home())
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "systemd-analyze verify: {all}");
        // verify exits 0 on unknown keys and bad values but names the file: nothing may.
        assert!(
            !all.contains("linkrelayd.service"),
            "systemd-analyze verify complained: {all}"
        );
    } else {
        eprintln!("systemd-analyze not installed: checked the unit by parsing only");
    }

    // --dry-run shows and writes nothing.
    std::fs::remove_file(unit_path(&w)).unwrap();
    let out = w.run_cli(&["install", "--user", "--dry-run"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&unit), "{}", text(&out.stdout));
    assert!(!unit_path(&w).exists());
    install(&w);

    // Again: nothing changes. --remove takes both away.
    let again = install(&w);
    assert!(again.contains("unchanged"), "{again}");
    let out = w.run_cli(&["install", "--user", "--remove"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!unit_path(&w).exists() && !dbus_service_path(&w).exists());
}

#[test]
fn install_refuses_an_agent_that_is_not_there() {
    let w = World::new().unwrap();
    let out = w
        .run_cli(&["install", "--user", "--agent", "/nonexistent/linkrelayd"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/linkrelayd is not an executable file"),
        "{}",
        text(&out.stderr)
    );
    assert!(!unit_path(&w).exists());
    // And --user is what it installs for: saying nothing is an error, not a guess.
    let out = w.run_cli(&["install"]).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--user"),
        "{}",
        text(&out.stderr)
    );
}

/// Kills the process that owns the agent's name on a bus (an activated agent is the bus
/// daemon's child, not ours) when dropped.
struct ActivatedAgent(Option<u32>);

impl Drop for ActivatedAgent {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// Runs `linkrelay sendmail ARGS` with `message` on stdin against `bus` (with no agent
/// running: its wake-up call makes the bus start one), checks that it queued the message, and
/// waits up to 5 s for the started agent; returns its pid.
async fn sendmail_starting_the_agent(
    w: &World,
    bus: &TestBus,
    args: &[&str],
    message: &[u8],
) -> Option<u32> {
    let mut sendmail = w
        .cli()
        .arg("sendmail")
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = sendmail.stdin.take().unwrap();
        stdin.write_all(message).unwrap();
    }
    let out = sendmail.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for _ in 0..250 {
        if let Some(pid) = owner_pid(bus).await {
            return Some(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Whether process `pid` still runs (a zombie, whose parent has not reaped it yet, does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command's closing parenthesis.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// A session bus like a desktop's: it reads the user's dbus-1/services directory, and what it
/// starts lives in `w`'s world.
fn activating_bus(w: &World) -> TestBus {
    let services = dbus_service_path(w).parent().unwrap().to_path_buf();
    TestBus::start_with(
        BusKind::Session,
        &BusOptions {
            service_dirs: vec![services],
            env: w.env_pairs(),
        },
    )
    .unwrap()
}

/// The pid of the name's owner on `bus`, if any.
async fn owner_pid(bus: &TestBus) -> Option<u32> {
    let conn = bus.connect().await.ok()?;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.ok()?;
    let name = zbus::names::BusName::try_from(AGENT_BUS_NAME).ok()?;
    let owner = dbus.get_name_owner(name).await.ok()?;
    dbus.get_connection_unix_process_id(owner.into()).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queueing_mail_starts_an_installed_agent_which_then_holds_it_with_a_reason() {
    let w = World::new().unwrap();
    install(&w);
    let bus = activating_bus(&w);
    // sendmail's wake-up call asks the bus for the agent; it starts and finds the message.
    let pid = sendmail_starting_the_agent(
        &w,
        &bus,
        &["-t", "-i"],
        b"From: me@example.org\nTo: you@example.org\nSubject: wake\n\nhi\n",
    )
    .await;
    let _guard = ActivatedAgent(pid);
    assert!(
        pid.is_some(),
        "no agent was started; bus log:\n{}",
        bus.log()
    );
    let mut queue = serde_json::Value::Null;
    for _ in 0..250 {
        let out = w
            .cli()
            .args(["queue", "--json"])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        queue = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if queue[0]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("held: "))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        queue[0]["recipients"][0]["addr"], "you@example.org",
        "{queue}"
    );
    assert!(
        queue[0]["status"]
            .as_str()
            .unwrap_or_default()
            .starts_with("held: "),
        "{queue}"
    );
}

/// An agent started by a message answers every call, and ends with its bus, every time. Its
/// start-up once raced a call in flight (the bus watch's subscription, polled by the event
/// loop) against the loop's own signals for zbus's send lock: about one start in seven hung
/// for good, deaf to D-Bus and SIGTERM. Starting it many times makes that race show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_by_a_message_answers_and_ends_with_its_bus_every_time() {
    const STARTS: usize = 60;
    for start in 0..STARTS {
        let w = World::new().unwrap();
        install(&w);
        let bus = activating_bus(&w);
        let pid =
            sendmail_starting_the_agent(&w, &bus, &["you@example.org"], b"Subject: wake\n\nhi\n")
                .await;
        let Some(pid) = pid else {
            panic!(
                "start {start}: no agent was started; bus log:\n{}",
                bus.log()
            );
        };
        let guard = ActivatedAgent(Some(pid));
        // Calls into the event loop right after the start: the hang showed as no answer.
        let conn = bus.connect().await.unwrap();
        let agent = linkrelay_dbus::agent::AgentProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap();
        for call in 0..3 {
            let answer = tokio::time::timeout(Duration::from_secs(10), agent.wake("")).await;
            assert!(
                matches!(answer, Ok(Ok(()))),
                "start {start}, call {call}: the agent did not answer Wake ({answer:?}); bus log:\n{}",
                bus.log()
            );
        }
        // And it ends with its bus, as an agent whose session is over must.
        drop(agent);
        drop(conn);
        drop(bus);
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !running(pid),
            "start {start}: the agent outlived its bus by 10 s"
        );
        drop(guard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_linkrelay_call_starts_the_agent_through_dbus_activation() {
    let w = World::new().unwrap();
    install(&w);
    let bus = activating_bus(&w);
    let conn = bus.connect().await.unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let name = zbus::names::BusName::try_from(AGENT_BUS_NAME).unwrap();
    assert!(!dbus.name_has_owner(name.clone()).await.unwrap());
    let activatable = dbus.list_activatable_names().await.unwrap();
    assert!(
        activatable.iter().any(|n| n.as_str() == AGENT_BUS_NAME),
        "{activatable:?}"
    );

    let out = w
        .cli()
        .args(["status", "--json"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let owner = dbus.get_name_owner(name.clone()).await.ok();
    let pid = match &owner {
        Some(o) => dbus
            .get_connection_unix_process_id(o.clone().into())
            .await
            .ok(),
        None => None,
    };
    let _guard = ActivatedAgent(pid);
    assert!(
        out.status.success(),
        "status after activation: {}\nbus log:\n{}",
        text(&out.stderr),
        bus.log()
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["users"][0]["user"], "default", "{status}");
    // The agent that answered is the linkrelayd the file names, started by the bus.
    let pid = pid.expect("the agent owns its name");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, bin("linkrelayd"));
    assert!(dbus.name_has_owner(name).await.unwrap());
}

/// Receives datagrams on `sock` until one contains `what` or `timeout` passes; returns them.
fn receive_until(sock: &UnixDatagram, what: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline - Instant::now() + Duration::from_millis(1)))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = text(&buf[..n]);
                let done = msg.lines().any(|l| l == what);
                got.push(msg);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_systemd_it_is_ready_and_alive() {
    let mut w = World::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let sock = UnixDatagram::bind(&socket).unwrap();
    let socket_s = socket.to_str().unwrap().to_string();

    // Start it as systemd would (NOTIFY_SOCKET, WATCHDOG_USEC for a 300 ms watchdog), without
    // waiting for its name: READY=1 is what tells us it is there.
    let mut cmd = Command::new(bin("linkrelayd"));
    w.env(&mut cmd);
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .env("NOTIFY_SOCKET", &socket_s)
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let got =
        tokio::task::block_in_place(|| receive_until(&sock, "READY=1", Duration::from_secs(15)));
    let ready = got.iter().any(|m| m.lines().any(|l| l == "READY=1"));
    let conn = w.session.connect().await.unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    let owned = dbus
        .name_has_owner(zbus::names::BusName::try_from(AGENT_BUS_NAME).unwrap())
        .await
        .unwrap();
    let watchdogs = tokio::task::block_in_place(|| {
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while n < 3 && Instant::now() < deadline {
            let got = receive_until(&sock, "WATCHDOG=1", deadline - Instant::now());
            n += got
                .iter()
                .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
                .count();
        }
        n
    });
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let stopping =
        tokio::task::block_in_place(|| receive_until(&sock, "STOPPING=1", Duration::from_secs(5)));
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(ready, "no READY=1 (got {got:?}); log:\n{logged}");
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=serving org.linkrelay.Agent")),
        "{got:?}"
    );
    // `systemctl --user status` shows what the agent is doing.
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=no matched link; default held: ")),
        "{got:?}"
    );
    assert!(
        owned,
        "READY=1 came before the agent owned {AGENT_BUS_NAME}"
    );
    assert!(
        watchdogs >= 3,
        "only {watchdogs} WATCHDOG=1 pings; log:\n{logged}"
    );
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{stopping:?}"
    );
    drop(w.session.connect().await);
    w.stop_agent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_journald_logs_carry_priorities_and_no_timestamps_or_colours() {
    let mut w = World::new().unwrap();
    // stderr is the log file; JOURNAL_STREAM names it, as systemd names its journal socket.
    assert!(w.run_cli(&["config", "init"]).unwrap().status.success());
    let log = std::fs::File::create(w.agent_log_path()).unwrap();
    let meta = log.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    w.start_agent_env(&[], &[("JOURNAL_STREAM", &stream), ("NO_COLOR", "")])
        .await
        .unwrap();
    // A broken config on reload is a warning: priority 4.
    w.write_config("[agent]\nsource = \"telepathy\"\n").unwrap();
    let out = w.run_cli(&["reload"]).unwrap();
    assert_eq!(out.status.code(), Some(78));
    w.stop_agent();
    let logged = w.agent_log();
    assert!(
        logged
            .lines()
            .any(|l| l.starts_with("<4>") && l.contains("config reload failed")),
        "{logged}"
    );
    let ready = logged
        .lines()
        .find(|l| l.contains("linkrelayd ready"))
        .unwrap_or_else(|| panic!("no ready line in:\n{logged}"));
    assert!(
        ready.starts_with("<6>linkrelay_agent::agent: linkrelayd ready"),
        "{ready}"
    );
    // The structured field stays.
    assert!(ready.contains("bus=Session"), "{ready}");
    assert!(!logged.contains('\x1b'), "colour codes:\n{logged}");
    for line in logged.lines().filter(|l| l.starts_with('<')) {
        assert!(
            line.starts_with("<3>")
                || line.starts_with("<4>")
                || line.starts_with("<6>")
                || line.starts_with("<7>"),
            "{line}"
        );
        // No "2026-11-29T10:00:00.123456Z" in front: journald stamps entries itself.
        assert!(
            !line[3..].starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
    }

    // Outside systemd (the variable inherited, stderr elsewhere) the usual lines stay.
    let mut w2 = World::new().unwrap();
    w2.start_agent_env(&[], &[("JOURNAL_STREAM", "1:1")])
        .await
        .unwrap();
    w2.stop_agent();
    let plain = w2.agent_log();
    let ready = plain
        .lines()
        .find(|l| l.contains("linkrelayd ready"))
        .unwrap_or_else(|| panic!("no ready line in:\n{plain}"));
    assert!(ready.starts_with(|c: char| c.is_ascii_digit()), "{ready}");
    assert!(ready.contains(" INFO "), "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_line_says_what_is_held_and_why_and_follows_changes() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    // No NetworkManager: no link, mail held.
    let out = w.run_cli(&["status", "--format", "waybar"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["class"], "error", "{v}");
    assert_eq!(v["alt"], "error");
    assert_eq!(v["text"], "no link");
    assert!(
        v["tooltip"]
            .as_str()
            .unwrap()
            .contains("problem: NetworkManager is not running"),
        "{v}"
    );

    // Follow: a panel's continuous script gets a new line when mail is queued.
    let mut follow = w
        .cli()
        .args(["status", "--format", "line", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, "no link (NetworkManager is not running)");
    w.send("bob@bob.example", "x@dest.example", "panel")
        .unwrap();
    let second = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        second,
        "held: 1 queued (no link)",
        "agent log:\n{}",
        w.agent_log()
    );
    let one = text(&w.run_cli(&["status", "--format", "line"]).unwrap().stdout);
    assert_eq!(one.trim_end(), second);
    // The old forms are still there.
    assert_eq!(cli_json(w, &["status"])["users"][1]["queued"], 1);

    // The agent goes away and comes back: the panel says so each time.
    s.world.stop_agent();
    let third = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        third.starts_with("linkrelay off (linkrelayd is not running"),
        "{third}"
    );
    s.world.start_agent().await.unwrap();
    let fourth = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(fourth, "held: 1 queued (no link)");
}

#[test]
fn the_panel_shows_a_down_agent_instead_of_failing() {
    let w = World::new().unwrap();
    let out = w.run_cli(&["status", "--format", "waybar"]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["class"], "down");
    assert!(
        v["tooltip"]
            .as_str()
            .unwrap()
            .contains("linkrelayd is not running"),
        "{v}"
    );
    // Plain status keeps its EX_UNAVAILABLE.
    assert_eq!(w.run_cli(&["status"]).unwrap().status.code(), Some(69));
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    let w = World::new().unwrap();
    let bash = w.run_cli(&["completions", "bash"]).unwrap();
    assert!(bash.status.success());
    let script = text(&bash.stdout);
    for verb in [
        "status",
        "flush",
        "install",
        "completions",
        "man",
        "sendmail",
    ] {
        assert!(script.contains(verb), "bash completion lacks {verb}");
    }
    assert!(script.contains("waybar"), "value of --format completes");
    // bash can load it, and completing `linkrelay st` offers status.
    let probe = format!(
        "{script}\nCOMP_WORDS=(linkrelay st); COMP_CWORD=1; COMP_LINE='linkrelay st'; COMP_POINT=12; \
         _linkrelay linkrelay st linkrelay; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let out = Command::new("bash").arg("-c").arg(&probe).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "status", "{}", text(&out.stderr));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = w.run_cli(&["completions", shell]).unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    for (shell, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        let path = format!("/usr/bin/{shell}");
        if Path::new(&path).exists() {
            let out = w.run_cli(&["completions", shell]).unwrap();
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), &out.stdout).unwrap();
            let r = Command::new(&path)
                .arg(check)
                .arg(f.path())
                .output()
                .unwrap();
            assert!(r.status.success(), "{shell}: {}", text(&r.stderr));
        }
    }

    let man = w.run_cli(&["man"]).unwrap();
    assert!(man.status.success());
    let page = text(&man.stdout);
    assert!(page.contains(".TH linkrelay 1"), "{page}");
    assert!(page.contains("linkrelay\\-install(1)"), "{page}");
    assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
    assert!(page.contains("linkrelayd.service"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = w
        .run_cli(&["man", "--dir", dir.path().to_str().unwrap()])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status_page = dir.path().join("linkrelay-status.1");
    let status_text = std::fs::read_to_string(&status_page).unwrap();
    assert!(status_text.contains("waybar"), "{status_text}");
    assert!(dir.path().join("linkrelay-install.1").exists());
    // groff reads every page without a warning.
    if Path::new("/usr/bin/groff").exists() {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let p = entry.unwrap().path();
            let r = Command::new("/usr/bin/groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                r.status.success() && r.stderr.is_empty(),
                "{}: {}",
                p.display(),
                text(&r.stderr)
            );
        }
    }
}

/// A panel's `status --follow` ends when its session bus goes away (a logout), instead of
/// spinning on the broken connection: one was found using a whole core for 50 minutes.
#[test]
fn status_follow_ends_when_the_bus_goes_away() {
    let w = World::new().unwrap();
    let bus = TestBus::session().unwrap();
    let mut follow = w
        .cli()
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .args(["status", "--format", "line", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first line (no agent on this bus) says it is following.
    let mut first = String::new();
    BufReader::new(follow.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    drop(bus);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            let _ = follow.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.is_some(),
        "status --follow kept running after its bus went away"
    );
}
