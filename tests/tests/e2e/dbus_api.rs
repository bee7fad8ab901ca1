//! The D-Bus interface: what it serves matches the checked-in XML, and hostile calls get errors.

use linkrelay_dbus::agent::{AGENT_BUS_NAME, AGENT_INTERFACE_XML, AGENT_PATH};
use linkrelay_tests::world::World;

use crate::util::seed;

/// The `<interface name="org.linkrelay.Agent1">` element, whitespace-normalised.
fn agent1_block(xml: &str) -> String {
    let start = xml
        .find("<interface name=\"org.linkrelay.Agent1\">")
        .expect("interface present");
    let end = xml[start..].find("</interface>").expect("closed") + start;
    xml[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_interface_matches_the_checked_in_xml() {
    let mut w = World::new().unwrap();
    w.start_agent().await.unwrap();
    let conn = w.session.connect().await.unwrap();
    let intro = zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination(AGENT_BUS_NAME)
        .path(AGENT_PATH)
        .build()
        .await
        .unwrap();
    let served = intro.introspect().await.unwrap();
    assert_eq!(
        agent1_block(&served),
        agent1_block(AGENT_INTERFACE_XML),
        "dbus/org.linkrelay.Agent1.xml is out of date; regenerate it (see its header)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_get_errors_and_touch_nothing() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "x@dest.example", "keep-me")
        .unwrap();
    let agent = w.agent().await.unwrap();
    let err = |r: zbus::Result<()>| match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => panic!(
            "expected a D-Bus error, got {other:?}\n{}\n{}",
            w.agent_log(),
            w.session.log()
        ),
    };
    // (A NUL cannot even cross the bus: dbus-daemon drops a client that sends one.)
    for id in [
        "../../../etc/passwd",
        "..",
        "a/b",
        "",
        ".hidden",
        "x\ny",
        "/etc/passwd",
    ] {
        assert_eq!(
            err(agent.retry(id).await),
            "org.linkrelay.Agent1.Error.InvalidArgument",
            "retry {id:?}"
        );
        assert_eq!(
            err(agent.drop(id).await),
            "org.linkrelay.Agent1.Error.InvalidArgument",
            "drop {id:?}"
        );
    }
    assert_eq!(
        err(agent.drop("1700000000.000000.1.abcd").await),
        "org.linkrelay.Agent1.Error.UnknownId"
    );
    assert_eq!(
        err(agent.set_override("link", "no-such-link", 0).await),
        "org.linkrelay.Agent1.Error.UnknownLink"
    );
    assert_eq!(
        err(agent.set_override("relay", "no-such-relay", 0).await),
        "org.linkrelay.Agent1.Error.UnknownRelay"
    );
    assert_eq!(
        err(agent.set_override("teleport", "x", 0).await),
        "org.linkrelay.Agent1.Error.InvalidArgument"
    );
    let huge = "x".repeat(1 << 20);
    assert_eq!(
        err(agent.set_override("link", &huge, 0).await),
        "org.linkrelay.Agent1.Error.InvalidArgument"
    );
    match agent.list_queue("../bob").await {
        Err(zbus::Error::MethodError(name, _, _)) => {
            assert_eq!(name.as_str(), "org.linkrelay.Agent1.Error.UnknownUser")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    match agent.stream_queue("../bob").await {
        Err(zbus::Error::MethodError(name, _, _)) => {
            assert_eq!(name.as_str(), "org.linkrelay.Agent1.Error.UnknownUser")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Wrong argument types are refused by the bus layer, not a crash.
    let conn = w.session.connect().await.unwrap();
    let r = conn
        .call_method(
            Some(AGENT_BUS_NAME),
            AGENT_PATH,
            Some("org.linkrelay.Agent1"),
            "Retry",
            &(42u32, true),
        )
        .await;
    assert!(r.is_err());
    // The agent is alive and the queued message untouched.
    assert_eq!(agent.list_queue("bob").await.unwrap().len(), 1);
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);
    assert!(
        w.data_dir
            .parent()
            .unwrap()
            .join("etc")
            .symlink_metadata()
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_changed_says_what_changed_and_nothing_else() {
    use futures_util::StreamExt;
    use linkrelay_tests::nm::{ActiveSpec, FakeNm};
    let mut s = seed().await;
    let nm = FakeNm::start(&s.world.system.address, vec![], 1)
        .await
        .unwrap();
    s.world.start_agent().await.unwrap();
    let conn = s.world.session.connect().await.unwrap();
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path(AGENT_PATH)
        .build()
        .unwrap();
    let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None)
        .await
        .unwrap();
    let mut changed_names = async |wait: std::time::Duration| {
        let mut names = Vec::new();
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, stream.next()).await {
            let (_, changed, _): (
                String,
                std::collections::HashMap<String, zbus::OwnedVariant>,
                Vec<String>,
            ) = msg.body().deserialize().unwrap();
            names.extend(changed.into_keys());
        }
        names
    };
    // An override changes the override and the routes, and nothing else.
    let agent = s.world.agent().await.unwrap();
    agent.set_override("relay", "relay-a", 0).await.unwrap();
    let mut names = changed_names(std::time::Duration::from_millis(300)).await;
    names.sort();
    assert_eq!(names, ["Override", "Routes"]);
    agent.clear_override().await.unwrap();
    changed_names(std::time::Duration::from_millis(300)).await;
    // A link coming up announces the link and the routes.
    s.network.set("ISP-A");
    nm.activate(ActiveSpec::ethernet("ISP-A", "eth0", "192.0.2.1"))
        .await
        .unwrap();
    let names = changed_names(std::time::Duration::from_millis(500)).await;
    assert!(names.contains(&"Link".to_string()), "{names:?}");
    assert!(names.contains(&"Routes".to_string()), "{names:?}");
    assert!(!names.contains(&"ConfigPath".to_string()), "{names:?}");
}

/// Runs `busctl call` on the agent as the user `nobody` (uid 65534), over the private
/// session bus, and returns (success, stdout + stderr).
fn call_as_nobody(w: &World, method: &str, signature: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "busctl",
            &format!("--address={}", w.session.address),
            "call",
            AGENT_BUS_NAME,
            AGENT_PATH,
            "org.linkrelay.Agent1",
            method,
        ])
        .args((!signature.is_empty()).then_some(signature))
        .args(args)
        .output()
        .expect("setpriv and busctl (util-linux, systemd) run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_on_the_bus_may_not_use_the_agent() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "x@dest.example", "not-yours")
        .unwrap();
    let agent = w.agent().await.unwrap();
    let id = agent.list_queue("bob").await.unwrap()[0].id.clone();
    // Let nobody reach the bus socket (its directory is private to us by default); the bus
    // policy lets any user connect, as a system bus would.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(w.session.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // It can connect and read what any bus peer can (the interface itself)...
    let (ok, text) = call_as_nobody(w, "Wake", "s", &["bob"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("uid 65534 may not use the agent of uid 0"),
        "the refusal names who asked: {text}"
    );
    // ...but every method refuses it, and nothing changes.
    let calls: &[(&str, &str, &[&str])] = &[
        ("SetOverride", "sst", &["relay", "relay-a", "0"]),
        ("ClearOverride", "", &[]),
        ("Flush", "sb", &["", "true"]),
        ("Wake", "s", &[""]),
        ("ListQueue", "s", &[""]),
        ("StreamQueue", "s", &[""]),
        ("Retry", "s", &[&id]),
        ("Drop", "s", &[&id]),
        ("Reload", "", &[]),
        ("TestRelay", "sss", &["relay-a", "", ""]),
        (
            "ProbeRelay",
            "sss",
            &[
                "[[relay]]\nname = \"x\"\nhost = \"127.0.0.1\"\ntls = \"none\"\n",
                "",
                "",
            ],
        ),
        ("LinkHistory", "", &[]),
    ];
    for (method, signature, args) in calls {
        let (ok, text) = call_as_nobody(w, method, signature, args);
        assert!(!ok, "{method} as nobody succeeded: {text}");
        assert!(
            text.contains("may not use the agent"),
            "{method} as nobody: {text}"
        );
    }
    assert_eq!(agent.override_().await.unwrap().kind, "");
    assert_eq!(agent.list_queue("bob").await.unwrap().len(), 1);
    assert_eq!(w.outbox_entries("bob", "queue"), std::slice::from_ref(&id));
    // The owner still can.
    agent.set_override("relay", "relay-a", 60).await.unwrap();
    agent.clear_override().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_survives_hostile_arguments() {
    let mut s = seed().await;
    s.world.start_agent().await.unwrap();
    let w = &s.world;
    w.send("bob@bob.example", "x@dest.example", "keep-me")
        .unwrap();
    let agent = w.agent().await.unwrap();
    let conn = w.session.connect().await.unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    async fn owner(d: &zbus::fdo::DBusProxy<'_>) -> String {
        d.get_name_owner(AGENT_BUS_NAME.try_into().unwrap())
            .await
            .unwrap()
            .to_string()
    }
    let before = owner(&dbus).await;
    let name = |r: zbus::Result<()>| match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        Err(other) => format!("{other}"),
        Ok(()) => "ok".into(),
    };

    let huge = "é".repeat(1 << 19); // 1 MiB of UTF-8
    let strings: Vec<String> = vec![
        huge.clone(),
        "x".repeat(257),
        "../../../../etc/passwd".into(),
        "/etc/passwd".into(),
        "bob/../alice".into(),
        "..".into(),
        ".".into(),
        "\u{202e}evil".into(),
        "a\tb".into(),
        "\u{7f}".into(),
        "%s%n%x".into(),
        "*".into(),
    ];
    for s in &strings {
        for r in [
            name(agent.set_override("link", s, 0).await),
            name(agent.set_override("relay", s, u64::MAX).await),
            name(agent.set_override(s, "relay-a", 1).await),
            name(agent.flush(s, true).await.map(|_| ())),
            name(agent.flush(s, false).await.map(|_| ())),
            name(agent.wake(s).await),
            name(agent.list_queue(s).await.map(|_| ())),
            name(agent.stream_queue(s).await.map(|_| ())),
            name(agent.retry(s).await),
            name(agent.drop(s).await),
            name(agent.probe_relay(s, "", "").await.map(|_| ())),
            name(agent.probe_relay("", s, "").await.map(|_| ())),
        ] {
            assert!(
                r.starts_with("org.linkrelay.Agent1.Error."),
                "{:?}: {r}",
                s.chars().take(40).collect::<String>()
            );
        }
    }
    // Extreme numbers: an override that never ends is still an override, and clears.
    agent
        .set_override("relay", "relay-a", u64::MAX)
        .await
        .unwrap();
    assert_eq!(agent.override_().await.unwrap().expires, u64::MAX);
    agent.clear_override().await.unwrap();

    // Wrong argument types, missing and extra arguments, for every method.
    for method in [
        "SetOverride",
        "ClearOverride",
        "Flush",
        "Wake",
        "ListQueue",
        "StreamQueue",
        "Retry",
        "Drop",
        "Reload",
        "TestRelay",
        "ProbeRelay",
        "LinkHistory",
    ] {
        let bodies: Vec<zbus::Result<zbus::Message>> = vec![
            conn.call_method(
                Some(AGENT_BUS_NAME),
                AGENT_PATH,
                Some("org.linkrelay.Agent1"),
                method,
                &(42u32, true, vec![1u8, 2, 3]),
            )
            .await,
            conn.call_method(
                Some(AGENT_BUS_NAME),
                AGENT_PATH,
                Some("org.linkrelay.Agent1"),
                method,
                &("relay", "relay-a", 0u64, "extra", 7i32),
            )
            .await,
        ];
        for r in bodies {
            assert!(r.is_err(), "{method} took a wrong body: {r:?}");
        }
    }
    // A method, interface or object that does not exist; a read-only property written.
    for (path, iface, method) in [
        (AGENT_PATH, "org.linkrelay.Agent1", "Teleport"),
        (AGENT_PATH, "org.linkrelay.Agent2", "Flush"),
        (
            "/org/linkrelay/Agent/../Agent",
            "org.linkrelay.Agent1",
            "Flush",
        ),
        ("/org/linkrelay/Other", "org.linkrelay.Agent1", "Flush"),
    ] {
        let r = conn
            .call_method(Some(AGENT_BUS_NAME), path, Some(iface), method, &("",))
            .await;
        assert!(r.is_err(), "{path} {iface}.{method}: {r:?}");
    }
    let r = conn
        .call_method(
            Some(AGENT_BUS_NAME),
            AGENT_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Set",
            &(
                "org.linkrelay.Agent1",
                "ConfigPath",
                zbus::Variant::from("/etc/shadow"),
            ),
        )
        .await;
    assert!(r.is_err(), "a read-only property was set: {r:?}");
    assert_eq!(
        agent.config_path().await.unwrap(),
        w.config_path.display().to_string()
    );

    // Still the same agent process, still answering, nothing lost or touched.
    assert_eq!(
        owner(&dbus).await,
        before,
        "the agent restarted or lost its name"
    );
    assert_eq!(agent.list_queue("bob").await.unwrap().len(), 1);
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);
    assert!(w.agent_log().lines().all(|l| !l.contains("panicked")));
}
