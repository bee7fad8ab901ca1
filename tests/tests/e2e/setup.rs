//! `linkrelay setup ADDRESS` against a real DNS server (dnsmasq) and a real HTTPS server in a
//! network namespace, with the agent in the same namespace trying what setup found. Needs root.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use linkrelay_tests::NetNs;
use linkrelay_tests::keyring::Keyring;
use linkrelay_tests::maildomain::{DomainServers, Site, autoconfig_xml};
use linkrelay_tests::nm::{ActiveSpec, FakeNm};
use linkrelay_tests::run::text;
use linkrelay_tests::smtp::{RelayScript, ScriptedRelay};
use linkrelay_tests::tls::TestCa;
use linkrelay_tests::world::{World, bin};

use crate::util::eventually;

const ISPDB: &str = "https://ispdb.test/v1.1/";

/// Every domain the tests look up, each answered in one way.
fn site() -> Site {
    let web = "127.0.0.1";
    let big = format!(
        "<clientConfig>{}</clientConfig>",
        "<!-- padding -->".repeat(8000)
    );
    Site::new()
        // good.example: HTTPS autoconfig, a relay that wants a login.
        .host("autoconfig.good.example", web)
        .host("smtp.good.example", web)
        .page(
            "https://autoconfig.good.example/mail/config-v1.1.xml",
            &autoconfig_xml(
                "good.example",
                "smtp.good.example",
                587,
                "STARTTLS",
                "%EMAILLOCALPART%",
            ),
        )
        // wk.example: the well-known URL only.
        .host("wk.example", web)
        .page(
            "https://wk.example/.well-known/autoconfig/mail/config-v1.1.xml",
            &autoconfig_xml("wk.example", "smtp.wk.example", 465, "SSL", ""),
        )
        // db.example: the ISP database only.
        .host("ispdb.test", web)
        .page(
            "https://ispdb.test/v1.1/db.example",
            &autoconfig_xml(
                "db.example",
                "mail.db.example",
                587,
                "STARTTLS",
                "%EMAILADDRESS%",
            ),
        )
        // srv.example: RFC 6186 only.
        .srv("_submission._tcp.srv.example", "submit.srv.example", 587)
        // mx.example: its MX host's provider is in the ISP database.
        .mx("mx.example", "mx1.provider.example")
        .page(
            "https://ispdb.test/v1.1/provider.example",
            &autoconfig_xml("provider.example", "smtp.provider.example", 465, "SSL", ""),
        )
        // plain.example: autoconfig over plain HTTP only.
        .host("autoconfig.plain.example", web)
        .page(
            "http://autoconfig.plain.example/mail/config-v1.1.xml",
            &autoconfig_xml("plain.example", "smtp.plain.example", 587, "STARTTLS", ""),
        )
        // guess.example: nothing but a host that takes connections on 587.
        .host("smtp.guess.example", web)
        // Hostile answers.
        .host("autoconfig.broken.example", web)
        .page(
            "https://autoconfig.broken.example/mail/config-v1.1.xml",
            "<clientConfig><emailProvider>",
        )
        .host("autoconfig.cleartext.example", web)
        .page(
            "https://autoconfig.cleartext.example/mail/config-v1.1.xml",
            &autoconfig_xml(
                "cleartext.example",
                "smtp.cleartext.example",
                25,
                "plain",
                "",
            ),
        )
        .host("autoconfig.moved.example", web)
        .redirect(
            "https://autoconfig.moved.example/mail/config-v1.1.xml",
            "https://collector.test/config-v1.1.xml",
        )
        .host("autoconfig.huge.example", web)
        .page("https://autoconfig.huge.example/mail/config-v1.1.xml", &big)
        .srv(
            "_submission._tcp.zeroport.example",
            "smtp.zeroport.example",
            0,
        )
}

/// The namespace with the servers, the agent and its world.
struct Domains {
    world: World,
    ns: NetNs,
    servers: DomainServers,
    relay: ScriptedRelay,
    trust: PathBuf,
    _nm: FakeNm,
    keyring: Keyring,
}

async fn domains() -> Domains {
    let ns = NetNs::create("domains").unwrap();
    let mut world = World::new().unwrap();
    let servers = DomainServers::start(&ns, "127.0.0.1", &world.dir().join("domains"), &site())
        .unwrap_or_else(|e| panic!("{e:#}"));
    ns.set_nameserver("127.0.0.1").unwrap();
    // smtp.good.example: STARTTLS with a certificate from another test CA, AUTH as alice.
    let relay_ca = TestCa::new("relay CA").unwrap();
    let listener = ns
        .run_in(|| TcpListener::bind("127.0.0.1:587"))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let relay = ScriptedRelay::start_on(
        RelayScript::named("smtp.good.example")
            .with_starttls(relay_ca.server_config(&["smtp.good.example"]).unwrap())
            .with_credentials("alice", "pw-alice"),
        listener,
    )
    .unwrap();
    // The agent and the CLI trust both test CAs, as the system's roots (SSL_CERT_FILE).
    let trust = world.dir().join("trust.pem");
    let web_ca = std::fs::read_to_string(&servers.ca_pem).unwrap();
    std::fs::write(&trust, format!("{web_ca}{}", relay_ca.pem())).unwrap();
    world.set_agent_env("SSL_CERT_FILE", &trust.display().to_string());
    let keyring = Keyring::start(&world.session).await.unwrap();
    let nm = FakeNm::start(
        &world.system.address,
        vec![ActiveSpec::ethernet("Home", "eth0", "192.0.2.1")],
        4,
    )
    .await
    .unwrap();
    world.start_agent_in(&ns, &[]).await.unwrap();
    Domains {
        world,
        ns,
        servers,
        relay,
        trust,
        _nm: nm,
        keyring,
    }
}

impl Domains {
    /// `linkrelay setup ARGS` in the namespace, `input` on its standard input.
    fn setup(&self, args: &[&str], input: &str) -> Output {
        let mut cmd: Command = self.ns.command(bin("linkrelay"));
        self.world.env(&mut cmd);
        cmd.env("SSL_CERT_FILE", &self.trust)
            .arg("setup")
            .args(args)
            .args(["--ispdb", ISPDB])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn config(&self) -> Option<String> {
        std::fs::read_to_string(&self.world.config_path).ok()
    }

    fn context(&self, out: &Output) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}\nagent:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.world.agent_log(),
            self.servers.logs()
        )
    }
}

/// Where setup found each domain's server, and whether it would take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_finding_a_server_says_where_the_answer_came_from() {
    let d = domains().await;
    for (address, found) in [
        (
            "carol@wk.example",
            "Found smtp.wk.example:465 (tls) from well-known autoconfig at https://wk.example/.well-known/autoconfig/mail/config-v1.1.xml\n",
        ),
        (
            "dave@db.example",
            "Found mail.db.example:587 (starttls) from ISP database at https://ispdb.test/v1.1/db.example\n",
        ),
        (
            "erin@srv.example",
            "Found submit.srv.example:587 (starttls) from SRV record _submission._tcp.srv.example\n",
        ),
        (
            "frank@mx.example",
            "Found smtp.provider.example:465 (tls) from ISP database at https://ispdb.test/v1.1/provider.example (for mx1.provider.example, the MX host of mx.example)\n",
        ),
    ] {
        // Some of them name a login: the password asked for goes into the test keyring.
        let out = d.setup(&[address, "--yes"], "a-password\n");
        let said = text(&out.stdout);
        assert!(said.contains(found), "{address}: {}", d.context(&out));
        // The agent cannot reach these hosts: nothing is written.
        assert!(!out.status.success(), "{address}: {}", d.context(&out));
        assert!(
            text(&out.stderr).contains("the relay did not answer the test"),
            "{address}: {}",
            d.context(&out)
        );
        assert_eq!(d.config(), None, "{address}: nothing written");
    }
    // Unverified answers are named so, and not taken without being accepted.
    for (address, found) in [
        (
            "gina@plain.example",
            "from autoconfig over plain HTTP at http://autoconfig.plain.example/mail/config-v1.1.xml?emailaddress=gina%40plain.example [UNVERIFIED]",
        ),
        (
            "hal@guess.example",
            "Found smtp.guess.example:587 (starttls) from a guess (the host took a connection) [UNVERIFIED]",
        ),
    ] {
        let out = d.setup(&[address, "--yes"], "");
        assert!(
            text(&out.stdout).contains(found),
            "{address}: {}",
            d.context(&out)
        );
        assert!(
            text(&out.stderr).contains("not using an unverified server"),
            "{address}: {}",
            d.context(&out)
        );
        assert_eq!(d.config(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_huge_plaintext_and_redirected_answers_each_end_in_their_error() {
    let d = domains().await;
    for (address, error) in [
        ("a@broken.example", "malformed autoconfig XML"),
        ("a@huge.example", "the answer is larger than 64 KiB"),
        (
            "a@cleartext.example",
            "it points only to a plaintext SMTP server (smtp.cleartext.example:25, socketType plain)",
        ),
        (
            "a@moved.example",
            "redirects to https://collector.test/config-v1.1.xml, outside moved.example: not followed",
        ),
        ("a@zeroport.example", "gives port 0"),
    ] {
        let out = d.setup(&[address, "--yes", "--accept-unverified"], "");
        assert_eq!(out.status.code(), Some(1), "{address}: {}", d.context(&out));
        assert!(
            text(&out.stderr).contains(error),
            "{address}: {}",
            d.context(&out)
        );
        assert_eq!(d.config(), None, "{address}: nothing written");
    }
    assert!(
        !d.servers.logs().contains("collector.test/config"),
        "the redirect was not followed"
    );
    assert!(d.relay.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_on_a_fresh_config_writes_a_relay_the_link_and_the_user_and_the_mail_goes_out() {
    let d = domains().await;
    let out = d.setup(&["alice@good.example", "--yes"], "pw-alice\n");
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", d.context(&out));
    assert!(
        said.contains("Found smtp.good.example:587 (starttls) from autoconfig at https://autoconfig.good.example/mail/config-v1.1.xml?emailaddress=alice%40good.example\n"),
        "{said}"
    );
    assert!(
        said.contains("Stored the password in the keyring"),
        "{said}"
    );
    assert!(
        said.contains("auth       ok      logged in as alice"),
        "{said}"
    );
    assert!(said.contains(": yes: the relay takes mail"), "{said}");
    assert!(said.contains("linkrelayd reloaded the config"), "{said}");
    let config = d.config().unwrap();
    for line in [
        "name = \"good.example\"\nhost = \"smtp.good.example\"\nport = 587\ntls = \"starttls\"\nusername = \"alice\"\npassword_secret = { service = \"smtp\", host = \"smtp.good.example\", username = \"alice\" }\n",
        "[[link]]\nname = \"home\"\nmatch = { id = \"Home\" }\n",
        "[[user]]\nname = \"alice\"\nfrom = [\"alice@good.example\"]\nroutes = { home = [\"good.example\"] }\n",
    ] {
        assert!(config.contains(line), "{config}");
    }
    assert!(
        !config.contains("pw-alice"),
        "no password in the file: {config}"
    );
    assert!(!said.contains("pw-alice"), "nor on the screen");
    assert_eq!(
        d.keyring
            .lookup([
                ("service", "smtp"),
                ("host", "smtp.good.example"),
                ("username", "alice")
            ])
            .unwrap(),
        "pw-alice"
    );
    let check = d.world.run_cli(&["config", "check"]).unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));

    d.world
        .wait_route("alice", "via good.example", |r| {
            r.relays == ["good.example"]
        })
        .await
        .unwrap();
    d.world
        .send("alice@good.example", "bob@elsewhere.example", "set-up")
        .unwrap();
    eventually("the relay took the mail", &d.world, || {
        d.relay.received().len() == 1
    })
    .await;
    // Run again: nothing new to write.
    let out = d.setup(&["alice@good.example", "--yes"], "");
    assert!(
        text(&out.stdout).contains("already has all of this"),
        "{}",
        d.context(&out)
    );
}
