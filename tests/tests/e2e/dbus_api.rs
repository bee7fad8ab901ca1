//! The D-Bus interface: what it serves matches the checked-in XML, and hostile calls get errors.

use linkrelay_dbus::{AGENT_BUS_NAME, AGENT_INTERFACE_XML, AGENT_PATH};
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
    assert_eq!(w.outbox_entries("bob", "queue").len(), 1);
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
