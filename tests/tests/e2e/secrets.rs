//! Credentials: the password comes from the desktop keyring (a real gnome-keyring-daemon on the
//! private session bus) or a password_command, and it never shows up anywhere else: not in the
//! agent's log at RUST_LOG=trace, not in what the agent says on D-Bus, not in `linkrelay queue`
//! or `status`, not in error texts.

use std::time::Duration;

use futures_util::StreamExt;
use linkrelay_dbus::agent::AGENT_BUS_NAME;
use linkrelay_tests::config::{Config, Link, Relay, User};
use linkrelay_tests::keyring::Keyring;
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::smtp::base64_encode;
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::tls::TestCa;
use linkrelay_tests::world::{World, cli_json};

use crate::util::eventually;

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "k3yring-Pa55-w0rd";

/// User bob sends everything through relay isp-b (STARTTLS, trusting `ca`), logging in as bob
/// with the password of the keyring item service=smtp username=bob.
fn config(port: u16, ca: &std::path::Path) -> String {
    Config::new()
        .agent("debounce", "50ms")
        .retry("min", "1h")
        .retry("max", "2h")
        .retry("refusal_memory", "0s")
        .link(Link::new("lan").id("LAN"))
        .relay(
            Relay::new("isp-b")
                .host("localhost")
                .port(port)
                .tls("starttls")
                .ca_file(ca)
                .timeout("5s")
                .password_secret("bob", &[("service", "smtp"), ("username", "bob")]),
        )
        .user(User::new("bob").from(["*"]).route("lan", ["isp-b"]))
        .to_string()
}

/// Every form in which the password could leak: as is, and as AUTH PLAIN and LOGIN send it.
fn leaks(text: &str) -> Vec<&'static str> {
    let plain = base64_encode(format!("\0bob\0{PASSWORD}").as_bytes());
    let login = base64_encode(PASSWORD.as_bytes());
    let mut found = Vec::new();
    if text.contains(PASSWORD) {
        found.push("the password");
    }
    if text.contains(&plain) {
        found.push("the AUTH PLAIN response");
    }
    if text.contains(&login) {
        found.push("the AUTH LOGIN response");
    }
    found
}

/// Where each test here starts: relay isp-b on localhost (STARTTLS with a test CA; it takes
/// bob with PASSWORD), a world whose config sends bob's mail through it on link lan, and
/// NetworkManager with LAN up. The agent is not started.
struct Lan {
    ca: TestCa,
    relay: ScriptedRelay,
    w: World,
    nm: FakeNm,
}

async fn bob_on_lan() -> Lan {
    let ca = TestCa::new("ISP B test CA").unwrap();
    let relay = ScriptedRelay::start(
        RelayScript::named("smtp.isp-b.test")
            .with_credentials("bob", PASSWORD)
            .with_starttls(ca.server_config(&["localhost"]).unwrap()),
    )
    .await
    .unwrap();
    let w = World::new().unwrap();
    let ca_path = w.dir().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    w.write_config(&config(relay.port(), &ca_path)).unwrap();
    let nm = FakeNm::start(
        &w.system.address,
        vec![ActiveSpec::ethernet("LAN", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    Lan { ca, relay, w, nm }
}

/// Stores bob's PASSWORD in `keyring` as the config's password_secret finds it.
fn store_password(keyring: &Keyring) {
    keyring
        .store(
            "ISP B mail",
            &[("service", "smtp"), ("username", "bob")],
            PASSWORD,
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyring_password_authenticates_and_never_leaks() {
    let Lan {
        ca,
        relay,
        mut w,
        nm: _nm,
    } = bob_on_lan().await;
    let keyring = Keyring::start(&w.session).await.unwrap();
    store_password(&keyring);
    // A config that names a keyring item holds no secret: it may be readable by others.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&w.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    w.set_agent_env("RUST_LOG", "trace");
    w.start_agent().await.unwrap();

    // Everything the agent sends on the bus: replies and signals.
    let watcher = w.session.connect().await.unwrap();
    let rule = zbus::MatchRule::builder()
        .sender(AGENT_BUS_NAME)
        .build()
        .unwrap();
    let mut from_agent =
        zbus::MessageStream::for_match_rule(rule, &watcher, std::num::NonZeroUsize::new(1000))
            .await
            .unwrap();

    w.send("bob@bob.example", "carol@dest.example", "keyring-1")
        .unwrap();
    let got = relay.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].authenticated_as.as_deref(), Some("bob"));
    assert!(got[0].tls);

    // The relay changes the password: the old one is refused, and the reply is shown.
    relay.set_script(
        RelayScript::named("smtp.isp-b.test")
            .with_credentials("bob", "something-else")
            .with_starttls(ca.server_config(&["localhost"]).unwrap()),
    );
    w.send("bob@bob.example", "dave@dest.example", "keyring-2")
        .unwrap();
    eventually("the second message is refused", &w, || {
        let q = cli_json(&w, &["queue"]);
        q.as_array().is_some_and(|a| {
            a.iter()
                .any(|m| m["last_error"].as_str().unwrap_or("").contains("535"))
        })
    })
    .await;

    // Now look everywhere a secret could have gone.
    let agent = w.agent().await.unwrap();
    let mut seen = String::new();
    for args in [&["queue"][..], &["status"]] {
        seen.push_str(&cli_json(&w, args).to_string());
    }
    for args in [&["queue"][..], &["status"]] {
        let out = w.run_cli(args).unwrap();
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    seen.push_str(&format!("{:?}", agent.list_queue("").await.unwrap()));
    seen.push_str(&format!("{:?}", agent.routes().await.unwrap()));
    seen.push_str(&format!("{:?}", agent.config_error().await.unwrap()));
    let out = w.run_cli(&["flush", "--wait", "--json"]).unwrap();
    seen.push_str(&String::from_utf8_lossy(&out.stdout));
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    let mut messages = 0;
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(200), from_agent.next()).await
    {
        messages += 1;
        seen.push_str(&String::from_utf8_lossy(msg.data()));
    }
    assert!(
        messages > 5,
        "the watcher saw the agent's traffic ({messages})"
    );
    assert!(seen.contains("535"), "the refusal is visible: {seen}");
    assert_eq!(leaks(&seen), Vec::<&str>::new(), "{seen}");

    let log = w.agent_log();
    assert!(log.contains("TRACE"), "the agent logged at trace level");
    assert!(log.contains("Secret Service"), "{log}");
    let leaked: Vec<&str> = log.lines().filter(|l| !leaks(l).is_empty()).collect();
    assert!(leaked.is_empty(), "in the agent's log: {leaked:#?}");

    let outbox = std::fs::read_dir(w.data_dir.join("bob/queue"))
        .unwrap()
        .chain(std::fs::read_dir(w.data_dir.join("bob/sent")).unwrap())
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("state.json")).unwrap())
        .collect::<String>();
    assert_eq!(leaks(&outbox), Vec::<&str>::new(), "in state.json files");
    drop(keyring);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keyring_no_item_or_a_locked_one_keeps_the_mail_and_says_what_to_do() {
    let Lan {
        relay,
        mut w,
        nm: _nm,
        ..
    } = bob_on_lan().await;
    w.start_agent().await.unwrap();
    let error_after_flush = |w: &World| {
        let out = w.run_cli(&["flush", "--wait"]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let q = cli_json(w, &["queue"]);
        assert_eq!(q.as_array().map(Vec::len), Some(1), "{q}");
        q[0]["last_error"].as_str().unwrap_or("").to_owned()
    };

    // 1. No Secret Service on the bus at all.
    w.send("bob@bob.example", "carol@dest.example", "waits")
        .unwrap();
    let e = error_after_flush(&w);
    assert!(e.contains("no Secret Service on the session bus"), "{e}");

    // 2. A keyring without the item.
    let keyring = Keyring::start(&w.session).await.unwrap();
    let e = error_after_flush(&w);
    assert!(
        e.contains(r#"no keyring item with service="smtp" username="bob""#),
        "{e}"
    );
    assert!(
        e.contains("secret-tool store --label=linkrelay service smtp username bob"),
        "{e}"
    );

    // 3. The item is there but the keyring is locked, and nobody can answer the unlock prompt
    // (no desktop): the prompt is dismissed, the mail waits, the reason says so.
    store_password(&keyring);
    keyring.lock_all().await.unwrap();
    let e = error_after_flush(&w);
    assert!(e.contains("is locked and was not unlocked"), "{e}");
    assert!(relay.received().is_empty());
    assert_eq!(w.wait_entries("bob", "queue", 1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_relay_logs_in_with_the_keyring_password() {
    let Lan {
        relay,
        mut w,
        nm: _nm,
        ..
    } = bob_on_lan().await;
    let keyring = Keyring::start(&w.session).await.unwrap();
    store_password(&keyring);
    w.start_agent().await.unwrap();

    let out = w
        .run_cli(&["test-relay", "isp-b", "--from", "bob@bob.example"])
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(
        said.contains("auth       ok      logged in as bob"),
        "{said}"
    );
    // The relay takes MAIL only after a successful AUTH: the sender was accepted.
    assert!(
        said.contains("mail from  ok      bob@bob.example: 250"),
        "{said}"
    );
    assert_eq!(leaks(&said), Vec::<&str>::new());
    // The relay was sent one AUTH, over TLS, with the keyring's password.
    let lines = relay.commands();
    let auth: Vec<_> = lines
        .iter()
        .filter(|l| l.line.to_ascii_uppercase().starts_with("AUTH "))
        .collect();
    assert_eq!(auth.len(), 1, "{lines:?}");
    assert!(auth[0].tls);
    let sent: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    assert!(!leaks(&sent.join("\n")).is_empty(), "{lines:?}");
    assert!(relay.received().is_empty(), "the test sent mail");
}

#[test]
fn a_config_others_can_read_with_a_password_command_or_write_is_refused_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new().unwrap();
    let chmod = |mode| {
        std::fs::set_permissions(&w.config_path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let path = w.config_path.display().to_string();
    std::fs::write(
        &w.config_path,
        "[[relay]]\nname = \"r\"\nhost = \"smtp.example.net\"\ntls = \"starttls\"\nusername = \"bob\"\npassword_command = \"echo hunter2\"\n[[user]]\nname = \"bob\"\nroutes = { \"*\" = [\"r\"] }\n",
    )
    .unwrap();
    chmod(0o644);
    for out in [
        w.run_agent_once(&["--check"]).unwrap(),
        w.run_cli(&["config", "check"]).unwrap(),
    ] {
        assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{path}:6:1: error: the config file has a `password_command` and can be read by anyone (mode 0644)")),
            "{err}"
        );
        assert!(err.contains(&format!("help: chmod 600 {path}")), "{err}");
        assert!(!err.contains("hunter2"), "the error shows no secret: {err}");
    }
    // sendmail does not queue through a config it cannot trust either, and says why.
    let out = w
        .sendmail(&["-t"], "From: bob@example.org\nTo: x@example.net\n\nhi\n")
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));

    chmod(0o600);
    let out = w.run_agent_once(&["--check"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Writable by others: refused whatever it holds.
    std::fs::write(&w.config_path, "[[user]]\nname = \"bob\"\n").unwrap();
    chmod(0o666);
    let out = w.run_agent_once(&["--check"]).unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("can be written by anyone (mode 0666)"),
        "{err}"
    );
    assert!(err.contains(&format!("help: chmod go-w {path}")), "{err}");
}

/// The Secret Service client that `linkrelay login` and the agent store refresh tokens with:
/// an item it stores is found by attributes (by it and by `secret-tool`), a second store with
/// the same attributes replaces the first, and delete removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_stored_by_the_client_replaces_its_namesake_and_can_be_deleted() {
    use linkrelay_dbus::secrets::{SecretError, client};
    let bus = linkrelay_tests::bus::TestBus::session().unwrap();
    let keyring = Keyring::start(&bus).await.unwrap();
    let conn = bus.connect().await.unwrap();
    let attributes: std::collections::BTreeMap<String, String> = [
        ("xdg:schema".to_owned(), "org.linkrelay.test".to_owned()),
        ("relay".to_owned(), "isp-b".to_owned()),
    ]
    .into();

    client::store_on(&conn, &attributes, "first", "token-one")
        .await
        .unwrap();
    client::store_on(&conn, &attributes, "second", "token-two")
        .await
        .unwrap();
    assert_eq!(
        client::lookup_on(&conn, &attributes).await.unwrap(),
        "token-two"
    );
    assert_eq!(keyring.lookup(&attributes).unwrap(), "token-two");

    assert_eq!(client::delete_on(&conn, &attributes).await.unwrap(), 1);
    assert!(matches!(
        client::lookup_on(&conn, &attributes).await,
        Err(SecretError::NotFound(..))
    ));
    assert_eq!(client::delete_on(&conn, &attributes).await.unwrap(), 0);
}
