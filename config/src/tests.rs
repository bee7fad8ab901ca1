//! Tests of the public API: the shipped files, every validation rule (with its exact position),
//! link matching and user choice.

use super::*;

/// The lines joined into a document (line `n` of the result is `lines[n - 1]`).
fn doc(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn parse(text: &str) -> Config {
    match Config::parse(text, Path::new("t.toml")) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn diags(text: &str) -> Vec<Diagnostic> {
    match Config::parse(text, Path::new("t.toml")) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(ConfigError::Invalid(d)) => d.0,
        Err(e) => panic!("expected diagnostics, got {e}"),
    }
}

/// The only diagnostic for `text`, as (line, col, message, help).
fn one(text: &str) -> (usize, usize, String, String) {
    let d = diags(text);
    assert_eq!(
        d.len(),
        1,
        "expected one diagnostic, got:\n{}",
        Diagnostics(d.clone())
    );
    let d = &d[0];
    (
        d.line,
        d.col,
        d.message.clone(),
        d.help.clone().unwrap_or_default(),
    )
}

/// A user, for configs whose other parts are under test.
const USER: &str = "[[user]]\nname = \"u\"";

fn facts(id: &str) -> LinkFacts {
    LinkFacts {
        id: id.into(),
        ..LinkFacts::default()
    }
}

fn user(name: &str, from: &[&str], default: bool) -> User {
    User {
        name: name.into(),
        from: from.iter().map(|s| s.to_string()).collect(),
        default,
        routes: BTreeMap::new(),
        other_links: None,
    }
}

// ---- the shipped files ----------------------------------------------------------------------

#[test]
fn example_config_parses() {
    let c = parse(include_str!("../../examples/config.toml"));
    assert_eq!(c.path.as_deref(), Some(Path::new("t.toml")));
    assert_eq!(c.agent, AgentSettings::default());
    assert_eq!(c.retry, RetrySettings::default());

    let names: Vec<_> = c.links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["isp-a", "isp-b", "home-wifi"]);
    assert_eq!(c.links[0].matcher.id.as_deref(), Some("ISP-A"));
    assert_eq!(c.links[0].metered, MeteredPolicy::Send);
    assert_eq!(c.links[1].matcher.id.as_deref(), Some("ISP-B"));
    assert_eq!(c.links[1].metered, MeteredPolicy::Hold);
    assert_eq!(c.links[2].matcher.ssid.as_deref(), Some("Home*"));

    let a = c.relay("relay-a").expect("relay-a");
    assert_eq!(
        (a.host.as_str(), a.port, a.tls),
        ("smtp.isp-a.example", 587, TlsMode::Starttls)
    );
    assert_eq!(a.auth, None);
    assert_eq!(a.timeout, Duration::from_secs(60));
    let b = c.relay("relay-b").expect("relay-b");
    assert_eq!((b.host.as_str(), b.port), ("smtp.isp-b.example", 587));
    let auth = b.auth.as_ref().expect("auth");
    assert_eq!(auth.username, "bob");
    let Secret::Keyring(secret) = &auth.secret else {
        panic!("password_secret read as {:?}", auth.secret);
    };
    assert_eq!(secret.get("service").map(String::as_str), Some("smtp"));
    assert_eq!(secret.get("username").map(String::as_str), Some("bob"));

    let alice = c.user("alice").expect("alice");
    assert!(!alice.default);
    assert_eq!(
        alice.relays_for("isp-a"),
        Some(&[RelayName::from("relay-a")][..])
    );
    assert_eq!(alice.relays_for("isp-b"), None);
    let bob = c.user("bob").expect("bob");
    assert!(bob.default);
    assert_eq!(
        bob.relays_for("isp-a"),
        Some(&[RelayName::from("relay-a")][..])
    );
    assert_eq!(
        bob.relays_for("isp-b"),
        Some(&[RelayName::from("relay-b")][..])
    );
    assert_eq!(bob.relays_for("home-wifi"), None);

    let user_of = |s: &str| c.user_for_sender(s).map(|u| u.name.as_str());
    assert_eq!(user_of("alice@isp-a.example"), Some("alice"));
    assert_eq!(user_of("Alice@ISP-A.Example"), Some("alice"));
    assert_eq!(user_of("bob@bob.example"), Some("bob"));
    assert_eq!(user_of("someone@elsewhere.example"), Some("bob"));

    let link_of = |f: &LinkFacts| c.match_link(f).map(|l| l.name.as_str());
    assert_eq!(link_of(&facts("ISP-A")), Some("isp-a"));
    assert_eq!(link_of(&facts("ISP-B")), Some("isp-b"));
    let wifi = LinkFacts {
        id: "Home 5G".into(),
        conn_type: "802-11-wireless".into(),
        ssid: Some("Home 5G".into()),
        ..LinkFacts::default()
    };
    assert_eq!(link_of(&wifi), Some("home-wifi"));
    assert_eq!(link_of(&facts("Cafe")), None);
}

#[test]
fn starter_config_parses_and_behaves_like_the_embedded_default() {
    let c = parse(STARTER_CONFIG);
    let embedded = Config::embedded_default();
    assert_eq!(Config { path: None, ..c }, embedded);
}

/// Every commented-out option of the starter config is valid once turned on.
#[test]
fn starter_config_options_are_valid_when_uncommented() {
    let text: String = STARTER_CONFIG
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let c = parse(&text);
    assert_eq!(c.links.len(), 1);
    let link = &c.links[0];
    assert_eq!(link.name, "home");
    assert!(link.matcher.id.is_some() && link.matcher.uuid.is_some());
    assert!(link.matcher.conn_type.is_some() && link.matcher.interface.is_some());
    assert!(link.matcher.ssid.is_some() && link.matcher.gateway.is_some());
    assert!(link.matcher.domain.is_some());
    assert_eq!(link.metered, MeteredPolicy::Small { max_size: 1048576 });
    let r = &c.relays[0];
    assert!(r.helo.is_some());
    assert!(matches!(
        &r.auth,
        Some(Auth {
            secret: Secret::Keyring(_),
            ..
        })
    ));
    assert_eq!(
        r.ca_file.as_deref(),
        Some(Path::new("/etc/ssl/certs/my-isp-ca.pem"))
    );
    assert_eq!(
        c.users[0].relays_for("home"),
        Some(&[RelayName::from("my-isp")][..])
    );
    // the listener it offers is the loopback pair the docs give
    let listen: Vec<String> = c.submission.listen.iter().map(|a| a.to_string()).collect();
    assert_eq!(listen, ["127.0.0.1:2525", "[::1]:2525"]);
    assert_eq!(
        c.setup.ispdb.as_deref(),
        Some("https://autoconfig.thunderbird.net/v1.1/")
    );
    assert_eq!(c.setup.nameserver, Some(([192, 0, 2, 53], 53).into()));
    // every key of every table is shown in the starter
    for key in [
        "ispdb",
        "nameserver",
        "source",
        "debounce",
        "min",
        "max",
        "lifetime",
        "refusal_memory",
        "max_message_size",
        "keep_sent",
        "keep_sent_size",
        "name",
        "match",
        "metered",
        "metered_max_size",
        "id",
        "uuid",
        "type",
        "interface",
        "ssid",
        "gateway",
        "domain",
        "address",
        "host",
        "port",
        "tls",
        "helo",
        "username",
        "password_command",
        "password_secret",
        "auth",
        "provider",
        "tenant",
        "client_id",
        "client_secret_command",
        "scopes",
        "login",
        "token_file",
        "dangerous_plaintext_auth",
        "ca_file",
        "timeout",
        "from",
        "default",
        "routes",
        "listen",
        "socket",
        "max_sessions",
        "max_recipients",
        "data_timeout",
    ] {
        assert!(
            text.contains(&format!("{key} = ")),
            "starter config does not show `{key}`"
        );
    }
}

#[test]
fn setup_settings_take_a_url_and_a_nameserver_with_or_without_a_port() {
    let c = parse(
        "[setup]\nispdb = \"https://ispdb.test/v1.1/\"\nnameserver = \"[2001:db8::53]:5353\"\n[[user]]\nname = \"u\"\nfrom = [\"*\"]\n",
    );
    assert_eq!(c.setup.nameserver.map(|a| a.port()), Some(5353));
    let err = Config::parse(
        "[setup]\nispdb = \"ftp://x\"\nnameserver = \"ns.example\"\n[[user]]\nname = \"u\"\nfrom = [\"*\"]\n",
        Path::new("c.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("c.toml:2:9: error: `ispdb` must be an http(s) URL"),
        "{err}"
    );
    assert!(
        err.contains("c.toml:3:14: error: `nameserver` must be an IP address"),
        "{err}"
    );
}

#[test]
fn embedded_default() {
    let c = Config::embedded_default();
    assert_eq!(c.path, None);
    assert!(c.links.is_empty() && c.relays.is_empty());
    assert_eq!(c.users, [user("default", &["*"], true)]);
    assert_eq!(c.agent.source, SourceKind::Auto);
    assert_eq!(c.agent.debounce, Duration::from_millis(300));
    assert_eq!(c.retry.min, Duration::from_secs(300));
    assert_eq!(c.retry.max, Duration::from_secs(3600));
    assert_eq!(c.retry.lifetime, Duration::from_secs(5 * 86400));
    assert_eq!(c.retry.refusal_memory, Duration::from_secs(1800));
    assert_eq!(
        c.user_for_sender("anyone@anywhere")
            .map(|u| u.name.as_str()),
        Some("default")
    );
}

#[test]
fn full_values_are_read() {
    let c = parse(&doc(&[
        "[agent]",
        r#"source = "netlink""#,
        r#"debounce = "2s""#,
        "[retry]",
        r#"min = "1m""#,
        r#"max = "2h""#,
        r#"lifetime = "1d""#,
        r#"refusal_memory = "0s""#,
        "[[link]]",
        r#"name = "m""#,
        r#"match = { interface = "wwan*" }"#,
        r#"metered = "small""#,
        "metered_max_size = 0x1000",
        "[[relay]]",
        r#"name = "r1""#,
        r#"host = "smtp.example.net""#,
        r#"tls = "tls""#,
        r#"helo = "laptop.example.net""#,
        r#"ca_file = "certs/ca.pem""#,
        r#"timeout = "90s""#,
        "[[relay]]",
        r#"name = "r2""#,
        r#"host = "127.0.0.1""#,
        r#"tls = "none""#,
        USER,
    ]));
    assert_eq!(c.agent.source, SourceKind::Netlink);
    assert_eq!(c.agent.debounce, Duration::from_secs(2));
    assert_eq!(c.retry.min, Duration::from_secs(60));
    assert_eq!(c.retry.max, Duration::from_secs(7200));
    assert_eq!(c.retry.lifetime, Duration::from_secs(86400));
    assert_eq!(c.retry.refusal_memory, Duration::ZERO);
    assert_eq!(c.links[0].metered, MeteredPolicy::Small { max_size: 4096 });
    let r1 = c.relay("r1").expect("r1");
    assert_eq!((r1.port, r1.tls), (465, TlsMode::Tls));
    assert_eq!(r1.helo.as_deref(), Some("laptop.example.net"));
    // relative to the directory of the origin ("t.toml": none)
    assert_eq!(r1.ca_file.as_deref(), Some(Path::new("certs/ca.pem")));
    assert_eq!(r1.timeout, Duration::from_secs(90));
    let r2 = c.relay("r2").expect("r2");
    assert_eq!((r2.port, r2.tls), (25, TlsMode::None));
    // a single user without `from` is the default user
    assert_eq!(c.user_for_sender("x@y").map(|u| u.name.as_str()), Some("u"));
}

#[test]
fn load_reads_the_file_and_resolves_ca_file_against_its_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let text = doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"ca_file = "ca.pem""#,
        USER,
    ]);
    std::fs::write(&path, text).expect("write");
    let c = Config::load(&path).expect("load");
    assert_eq!(c.path.as_deref(), Some(path.as_path()));
    assert_eq!(c.relays[0].ca_file, Some(dir.path().join("ca.pem")));

    let missing = dir.path().join("missing.toml");
    match Config::load(&missing) {
        Err(e @ ConfigError::Io { .. }) => {
            assert!(e.diagnostics().is_none());
            assert!(e.to_string().contains("missing.toml"), "{e}");
        }
        other => panic!("expected an Io error, got {other:?}"),
    }

    std::fs::write(&path, "[agent]\nsource = 1\n[[user]]\nname = \"u\"\n").expect("write");
    match Config::load(&path) {
        Err(ConfigError::Invalid(d)) => {
            assert_eq!(d.0[0].path, path);
            assert!(
                d.to_string()
                    .starts_with(&format!("{}:2:10: error: ", path.display()))
            );
        }
        other => panic!("expected diagnostics, got {other:?}"),
    }
}

#[test]
fn load_refuses_a_fifo_at_once_instead_of_waiting_for_a_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    // Without a writer, a blocking open of a FIFO never returns: run it on a thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Config::load(&p).map_err(|e| e.to_string()));
    });
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("Config::load returned within 5 s");
    let e = result.expect_err("a FIFO is no config");
    assert!(e.contains("not a regular file"), "{e}");
    assert!(e.contains("config.toml"), "{e}");
}

#[test]
fn load_refuses_a_directory_and_a_huge_file_without_reading_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Config::load(dir.path()).expect_err("a directory is no config");
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let path = dir.path().join("config.toml");
    let f = std::fs::File::create(&path).expect("create");
    // Sparse: 64 GiB claimed, nothing written.
    f.set_len(64 << 30).expect("set_len");
    let e = Config::load(&path).expect_err("64 GiB is no config");
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[test]
fn invalid_utf8_is_reported_at_its_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        b"[agent]\ndebounce = \"3\xff0ms\"\n[[user]]\nname = \"u\"\n",
    )
    .expect("write");
    match Config::load(&path) {
        Err(ConfigError::Invalid(d)) => {
            assert_eq!(d.0.len(), 1, "{d}");
            assert_eq!((d.0[0].line, d.0[0].col), (2, 14), "{d}");
            assert!(d.0[0].message.contains("UTF-8"), "{d}");
            assert!(
                d.to_string()
                    .starts_with(&format!("{}:2:14: error: ", path.display()))
            );
        }
        other => panic!("expected diagnostics, got {other:?}"),
    }
}

// ---- validation, rule by rule ---------------------------------------------------------------

#[test]
fn syntax_error_is_one_line_at_its_position() {
    let (line, col, message, help) = one(&doc(&["[agent]", "source = auto", USER]));
    assert_eq!((line, col), (2, 10));
    assert!(message.starts_with("TOML syntax: "), "{message}");
    assert!(
        !message.contains('\n') && !message.contains('|'),
        "{message}"
    );
    assert!(help.contains("double quotes"), "{help}");

    let (line, col, message, _) = one(&doc(&[USER, "from = [\"a\"]", "from = [\"b\"]"]));
    assert_eq!((line, col), (4, 1));
    assert!(message.contains("duplicate key"), "{message}");

    let (line, col, message, help) = one("[[user]\nname = \"u\"\n");
    assert_eq!((line, col), (1, 8));
    assert_eq!(message, "TOML syntax: unclosed array table, expected `]`");
    assert_eq!(help, "close the header with `]]`, as in [[user]]");

    let (.., message, _) = one(&doc(&["x = 01", USER]));
    assert_eq!(message, "TOML syntax: unexpected leading zero");

    let d = Diagnostics(diags("[agent]\nsource = \"auto\n"));
    let shown = d.to_string();
    assert!(shown.starts_with("t.toml:2:"), "{shown}");
    assert!(shown.contains("\n  help: "), "{shown}");
}

#[test]
fn columns_count_characters() {
    // "name = \"é\" # é" puts two 2-byte characters before the bad value on line 3
    let (line, col, ..) = one(&doc(&[
        "[[user]]",
        "name = \"u\"",
        "from = [\"é\", \"é\", 1]",
    ]));
    assert_eq!((line, col), (3, 19)); // byte offset 20: column 22 if bytes were counted
}

#[test]
fn wrong_types() {
    let d = diags(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"port = "587""#,
        "[[user]]",
        r#"name = "u""#,
        r#"default = "yes""#,
        r#"from = "u@example.net""#,
        "routes = { \"*\" = \"r\" }",
        "[agent]",
        "debounce = 300",
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.help.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (5, 8, "write port = 587".to_string()),
            (8, 11, "write default = true".to_string()),
            (9, 8, r#"write from = ["u@example.net"]"#.to_string()),
            (10, 18, r#"write "*" = ["r"]"#.to_string()),
            (12, 12, r#"write debounce = "300ms""#.to_string()),
        ]
    );
    assert_eq!(
        d[0].message,
        "`port` in [[relay]] must be an integer, not a string"
    );
    assert_eq!(
        d[4].message,
        "`debounce` in [agent] must be a duration in a string, not an integer"
    );
}

#[test]
fn table_written_as_single_table() {
    let (line, col, message, help) = one(&doc(&[USER, "[relay]", r#"name = "r""#]));
    assert_eq!((line, col), (3, 2));
    assert!(message.contains("array of tables"), "{message}");
    assert!(help.contains("[[relay]]"), "{help}");
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let d = diags(&doc(&[
        "colour = 1",
        "[agent]",
        r#"sorce = "auto""#,
        "[retry]",
        r#"maximum = "1h""#,
        "[[link]]",
        r#"name = "l""#,
        r#"match = { id = "x", ssdi = "y" }"#,
        "metred = true",
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        "prot = 25",
        "[[user]]",
        r#"name = "u""#,
        r#"form = ["a@b"]"#,
    ]));
    let got: Vec<_> = d.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        got,
        [(1, 1), (3, 1), (5, 1), (8, 21), (9, 1), (14, 1), (17, 1)]
    );
    assert_eq!(d[0].message, "unknown key `colour` in the top level");
    assert_eq!(
        d[0].help.as_deref(),
        Some(
            "valid keys are `agent`, `retry`, `notify`, `outbox`, `submission`, `setup`, `link`, `relay`, `user`"
        )
    );
    assert_eq!(d[1].message, "unknown key `sorce` in [agent]");
    assert_eq!(
        d[1].help.as_deref(),
        Some("did you mean `source`? valid keys are `source`, `debounce`")
    );
    assert!(
        d[2].help
            .as_deref()
            .is_some_and(|h| h.contains("`refusal_memory`"))
    );
    assert_eq!(d[3].message, "unknown key `ssdi` in match");
    assert!(
        d[3].help
            .as_deref()
            .is_some_and(|h| h.starts_with("did you mean `ssid`?"))
    );
    assert!(
        d[4].help
            .as_deref()
            .is_some_and(|h| h.contains("`metered_max_size`"))
    );
    assert_eq!(
        d[5].help.as_deref(),
        Some(
            "did you mean `port`? valid keys are `name`, `host`, `port`, `tls`, `helo`, \
             `username`, `auth`, `password_command`, `password_secret`, `oauth2`, `ca_file`, `timeout`, \
             `dangerous_plaintext_auth`"
        )
    );
    assert_eq!(d[6].message, "unknown key `form` in [[user]]");
}

#[test]
fn names_must_be_valid() {
    let d = diags(&doc(&[
        "[[link]]",
        r#"name = "ISP A""#,
        r#"match = { id = "ISP-A" }"#,
        "[[relay]]",
        r#"name = "-r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        "[[user]]",
        r#"name = "Ünïcode""#,
        "default = true",
        "[[user]]",
        r#"name = "..""#,
        r#"from = ["x"]"#,
        "[[user]]",
        r#"from = ["y"]"#,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, 8, r#"invalid link name "ISP A""#),
            (5, 8, r#"invalid relay name "-r""#),
            (9, 8, r#"invalid user name "\u{dc}n\u{ef}code""#),
            (12, 8, r#"invalid user name "..""#),
            (14, 1, "[[user]] without a `name`"),
        ]
    );
    assert!(
        d[0].help
            .as_deref()
            .is_some_and(|h| h.ends_with(r#"write name = "isp-a""#))
    );
    assert!(
        d[1].help
            .as_deref()
            .is_some_and(|h| h.ends_with(r#"write name = "r""#))
    );
    assert!(
        d[2].help
            .as_deref()
            .is_some_and(|h| h.ends_with(r#"write name = "n-code""#))
    );
    assert!(
        d[3].help
            .as_deref()
            .is_some_and(|h| h.ends_with(r#"e.g. name = "alice""#))
    );
    assert_eq!(d[4].help.as_deref(), Some(r#"add name = "alice""#));
}

#[test]
fn names_must_be_unique() {
    let d = diags(&doc(&[
        "[[link]]",
        r#"name = "l""#,
        r#"match = { id = "a" }"#,
        "[[link]]",
        r#"name = "l""#,
        r#"match = { id = "b" }"#,
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        "[[user]]",
        r#"name = "u""#,
        "default = true",
        "[[user]]",
        r#"name = "u""#,
        r#"from = ["x"]"#,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| {
            (
                d.line,
                d.col,
                d.message.as_str(),
                d.help.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                5,
                8,
                r#"duplicate link name "l""#,
                r#"the first [[link]] named "l" is at line 2; give this one another name"#
            ),
            (
                12,
                8,
                r#"duplicate relay name "r""#,
                r#"the first [[relay]] named "r" is at line 8; give this one another name"#
            ),
            (
                19,
                8,
                r#"duplicate user name "u""#,
                r#"the first [[user]] named "u" is at line 16; give this one another name"#
            ),
        ]
    );
}

#[test]
fn routes_must_name_known_links_and_relays() {
    let d = diags(&doc(&[
        "[[link]]",
        r#"name = "isp-a""#,
        r#"match = { id = "ISP-A" }"#,
        "[[link]]",
        r#"name = "isp-b""#,
        r#"match = { id = "ISP-B" }"#,
        "[[relay]]",
        r#"name = "relay-a""#,
        r#"host = "h""#,
        r#"tls = "starttls""#,
        "[[user]]",
        r#"name = "u""#,
        r#"routes = { isp-c = ["relay-a"], "*" = ["relay-a", "relay-z", "relay-a"], office = [] }"#,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| {
            (
                d.line,
                d.col,
                d.message.as_str(),
                d.help.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                13,
                12,
                r#"route for unknown link "isp-c""#,
                r#"did you mean "isp-a"? known links are `isp-a`, `isp-b`; "*" stands for any other link"#
            ),
            (
                13,
                51,
                r#"unknown relay "relay-z""#,
                r#"did you mean "relay-a"? known relays are `relay-a`"#
            ),
            (
                13,
                62,
                r#"relay "relay-a" is listed twice for link "*""#,
                "list each relay once: they are tried in order"
            ),
            (
                13,
                74,
                r#"route for unknown link "office""#,
                r#"known links are `isp-a`, `isp-b`; "*" stands for any other link"#
            ),
        ]
    );

    let (line, col, _, help) = one(&doc(&[
        "[[user]]",
        r#"name = "u""#,
        r#"routes = { home = [] }"#,
    ]));
    assert_eq!((line, col), (3, 12));
    assert_eq!(
        help,
        r#"no [[link]] is defined: add one with name = "home", or write "*" for any link"#
    );
    let (line, col, _, help) = one(&doc(&[
        "[[user]]",
        r#"name = "u""#,
        r#"routes = { "*" = ["r"] }"#,
    ]));
    assert_eq!((line, col), (3, 19));
    assert_eq!(help, r#"no [[relay]] is defined: add one with name = "r""#);
}

#[test]
fn link_match_must_be_given_and_not_empty() {
    let d = diags(&doc(&[
        "[[link]]",
        r#"name = "a""#,
        "match = {}",
        "[[link]]",
        r#"name = "b""#,
        r#"metered = "hold""#,
        USER,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (3, 9, "empty `match`: it would match every link"),
            (4, 1, r#"link "b" has no `match`"#),
        ]
    );
    assert!(d[0].help.as_deref().is_some_and(|h| h.contains("`ssid`")));
    assert!(
        d[1].help
            .as_deref()
            .is_some_and(|h| h.starts_with("add match = {"))
    );

    // a [link.match] table without keys is empty too
    let (line, col, ..) = one(&doc(&["[[link]]", r#"name = "a""#, "[link.match]", USER]));
    assert_eq!((line, col), (3, 1));
}

#[test]
fn bad_globs_are_reported_at_the_character() {
    let d = diags(&doc(&[
        "[[link]]",
        r#"name = "a""#,
        r#"match = { interface = "eth[0-9", ssid = "x[z-a]", gateway = "" }"#,
        "[[user]]",
        r#"name = "u""#,
        r#"from = ["ok@example.net", "bad\\"]"#,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                3,
                27,
                r#"invalid pattern "eth[0-9": unclosed `[` in pattern"#
            ),
            (
                3,
                44,
                r#"invalid pattern "x[z-a]": range `z-a` is backwards"#
            ),
            (3, 61, "empty pattern for `gateway` in match"),
            // written with an escape: pointed at the start of the string
            (
                6,
                27,
                r#"invalid pattern "bad\": pattern ends with a lone backslash"#
            ),
        ]
    );
    assert_eq!(
        d[1].help.as_deref(),
        Some("write the lower end first: `a-z`")
    );
}

#[test]
fn durations() {
    let d = diags(&doc(&[
        "[agent]",
        r#"debounce = "300 mils""#,
        "[retry]",
        r#"min = "0s""#,
        r#"lifetime = "five days""#,
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"timeout = "0ms""#,
        USER,
    ]));
    let got: Vec<_> = d.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(got, [(2, 12), (4, 7), (5, 12), (10, 11)]);
    assert!(
        d[0].message
            .starts_with(r#"invalid duration "300 mils" for `debounce`: "#)
    );
    assert_eq!(
        d[0].help.as_deref(),
        Some(r#"write a number and a unit, e.g. "300ms", "30s", "5m", "1h" or "5d""#)
    );
    assert_eq!(d[1].message, "`min` in [retry] must be more than 0");
    assert_eq!(d[3].message, "`timeout` must be more than 0");
}

#[test]
fn the_message_size_limit_is_a_number_of_bytes_above_zero() {
    let c = parse(&doc(&["[outbox]", "max_message_size = 1000", USER]));
    assert_eq!(c.outbox.max_message_size, 1000);
    assert_eq!(
        parse(USER).outbox.max_message_size,
        OutboxSettings::DEFAULT_MAX_MESSAGE_SIZE
    );
    for bad in ["0", "-1", "\"50MB\""] {
        let d = diags(&doc(&[
            "[outbox]",
            &format!("max_message_size = {bad}"),
            USER,
        ]));
        assert_eq!(d.len(), 1, "{bad}: {}", Diagnostics(d.clone()));
        assert_eq!((d[0].line, d[0].col), (2, 20), "{bad}");
    }
}

#[test]
fn sent_mail_is_kept_three_days_and_100_mib_unless_the_config_says() {
    let c = parse(USER);
    assert_eq!(c.outbox.keep_sent, Duration::from_secs(3 * 86_400));
    assert_eq!(c.outbox.keep_sent_size, 100 << 20);
    let c = parse(&doc(&[
        "[outbox]",
        r#"keep_sent = "0s""#,
        "keep_sent_size = 0",
        USER,
    ]));
    assert_eq!(
        (c.outbox.keep_sent, c.outbox.keep_sent_size),
        (Duration::ZERO, 0)
    );
    let (line, col, message, _) = one(&doc(&["[outbox]", "keep_sent_size = -1", USER]));
    assert_eq!((line, col), (2, 18));
    assert!(message.contains("keep_sent_size"), "{message}");
    let (line, col, _, _) = one(&doc(&["[outbox]", r#"keep_sent = "a week""#, USER]));
    assert_eq!((line, col), (2, 13));
}

#[test]
fn retry_max_must_not_be_less_than_min() {
    let (line, col, message, help) =
        one(&doc(&["[retry]", r#"min = "10m""#, r#"max = "5m""#, USER]));
    assert_eq!((line, col), (3, 7));
    assert_eq!(message, "`max` (5m) is less than `min` (10m)");
    assert_eq!(help, r#"write max = "10m" or more, or lower `min`"#);

    let (line, col, message, _) = one(&doc(&["[retry]", r#"min = "2h""#, USER]));
    assert_eq!((line, col), (2, 7));
    assert_eq!(message, "`min` (2h) is more than `max` (1h, the default)");
}

#[test]
fn a_zero_min_is_its_only_error_even_with_a_max_below_the_default_min() {
    let (line, col, message, _) = one(&doc(&["[retry]", r#"min = "0s""#, r#"max = "1m""#, USER]));
    assert_eq!((line, col), (2, 7));
    assert_eq!(message, "`min` in [retry] must be more than 0");
    let (line, col, message, _) = one(&doc(&["[retry]", r#"min = "2h""#, r#"max = "0s""#, USER]));
    assert_eq!((line, col), (3, 7));
    assert_eq!(message, "`max` in [retry] must be more than 0");
}

#[test]
fn ports() {
    let d = diags(&doc(&[
        "[[relay]]",
        r#"name = "a""#,
        r#"host = "h""#,
        r#"tls = "starttls""#,
        "port = 0",
        "[[relay]]",
        r#"name = "b""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        "port = 65536",
        "[[relay]]",
        r#"name = "c""#,
        r#"host = "h""#,
        r#"tls = "none""#,
        "port = 2525",
        USER,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| {
            (
                d.line,
                d.col,
                d.message.as_str(),
                d.help.as_deref().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                5,
                8,
                "port 0 is not a valid port",
                r#"write a port from 1 to 65535, or remove `port` to use the default for tls = "starttls", 587"#
            ),
            (
                10,
                8,
                "port 65536 is not a valid port",
                r#"write a port from 1 to 65535, or remove `port` to use the default for tls = "tls", 465"#
            ),
        ]
    );
}

#[test]
fn tls_is_required_and_checked() {
    let d = diags(&doc(&[
        "[[relay]]",
        r#"name = "a""#,
        r#"host = "h""#,
        "[[relay]]",
        r#"name = "b""#,
        r#"host = "h""#,
        r#"tls = "ssl""#,
        "[[relay]]",
        r#"name = "c""#,
        r#"host = "h""#,
        r#"tls = "starttsl""#,
        USER,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, 1, r#"relay "a" has no `tls`: it is required"#),
            (7, 7, r#"unknown tls mode "ssl""#),
            (11, 7, r#"unknown tls mode "starttsl""#),
        ]
    );
    for d in &d {
        let help = d.help.as_deref().unwrap_or("");
        assert!(
            help.contains(r#""starttls""#)
                && help.contains(r#""tls""#)
                && help.contains(r#""none""#),
            "{help}"
        );
    }
    assert!(
        d[2].help
            .as_deref()
            .is_some_and(|h| h.starts_with(r#"did you mean "starttls"?"#))
    );
}

#[test]
fn host_is_required_and_checked() {
    let d = diags(&doc(&[
        "[[relay]]",
        r#"name = "a""#,
        r#"tls = "tls""#,
        "[[relay]]",
        r#"name = "b""#,
        r#"tls = "tls""#,
        r#"host = "smtp.example.net:465""#,
        "[[relay]]",
        r#"name = "c""#,
        r#"tls = "tls""#,
        r#"host = " ""#,
        USER,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.help.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        got,
        [
            (1, 1, r#"add host = "smtp.example.net""#),
            (7, 8, r#"write host = "smtp.example.net" and port = 465"#),
            (
                11,
                8,
                r#"write host = "smtp.example.net", or remove the key"#
            ),
        ]
    );
}

#[test]
fn credentials_come_in_pairs_and_never_inline() {
    let d = diags(&doc(&[
        "[[relay]]",
        r#"name = "a""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"username = "me""#,
        "[[relay]]",
        r#"name = "b""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"password_command = "pass show b""#,
        "[[relay]]",
        r#"name = "c""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"username = "me""#,
        r#"password_command = "pass show c""#,
        r#"password = "hunter2""#,
        USER,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                5,
                1,
                r#"relay "a" has a `username` but no `password_command` or `password_secret`"#
            ),
            (
                10,
                1,
                r#"relay "b" has a `password_command` but no `username`"#
            ),
            (17, 1, "passwords are not written in the config file"),
        ]
    );
    assert!(d[0].help.as_deref().is_some_and(|h| {
        h.starts_with(r#"add password_secret = { service = "smtp""#)
            && h.contains(r#"password_command = "pass show smtp/a""#)
    }));
    assert!(
        d[1].help
            .as_deref()
            .is_some_and(|h| h.starts_with("add username = "))
    );
    assert!(
        d[2].help
            .as_deref()
            .is_some_and(|h| h.contains("password_command = "))
    );
}

#[test]
fn at_most_one_default_user() {
    let d = diags(&doc(&[
        "[[user]]",
        r#"name = "a""#,
        "default = true",
        "[[user]]",
        r#"name = "b""#,
        "default = false",
        r#"from = ["b@x"]"#,
        "[[user]]",
        r#"name = "c""#,
        "default = true",
        "[[user]]",
        r#"name = "d""#,
        "default = true",
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| {
            (
                d.line,
                d.col,
                d.message.as_str(),
                d.help.as_deref().unwrap_or(""),
            )
        })
        .collect();
    let help = r#"user "a" (line 3) is already the default: remove default = true here or there"#;
    assert_eq!(
        got,
        [
            (10, 11, "more than one user has default = true", help),
            (13, 11, "more than one user has default = true", help),
        ]
    );
}

#[test]
fn metered_policy() {
    let d = diags(&doc(&[
        "[[link]]",
        r#"name = "a""#,
        r#"match = { id = "a" }"#,
        "metered_max_size = 1000",
        "[[link]]",
        r#"name = "b""#,
        r#"match = { id = "b" }"#,
        r#"metered = "hold""#,
        "metered_max_size = 1000",
        "[[link]]",
        r#"name = "c""#,
        r#"match = { id = "c" }"#,
        r#"metered = "smal""#,
        "metered_max_size = 1000",
        "[[link]]",
        r#"name = "d""#,
        r#"match = { id = "d" }"#,
        r#"metered = "small""#,
        "metered_max_size = -1",
        USER,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                4,
                1,
                r#"`metered_max_size` is only used with metered = "small", and this link has metered = "send""#
            ),
            (
                9,
                1,
                r#"`metered_max_size` is only used with metered = "small", and this link has metered = "hold""#
            ),
            (13, 11, r#"unknown metered policy "smal""#),
            (
                19,
                20,
                "`metered_max_size` must be a size in bytes, more than 0, not -1"
            ),
        ]
    );
    assert_eq!(
        d[0].help.as_deref(),
        Some(r#"add metered = "small", or remove metered_max_size"#)
    );
    assert!(
        d[2].help
            .as_deref()
            .is_some_and(|h| h.starts_with(r#"did you mean "small"?"#))
    );

    let c = parse(&doc(&[
        "[[link]]",
        r#"name = "a""#,
        r#"match = { id = "a" }"#,
        r#"metered = "small""#,
        USER,
    ]));
    assert_eq!(
        c.links[0].metered,
        MeteredPolicy::Small {
            max_size: MeteredPolicy::DEFAULT_MAX_SIZE
        }
    );
}

#[test]
fn empty_from_only_for_the_default_user() {
    let d = diags(&doc(&[
        "[[user]]",
        r#"name = "a""#,
        r#"from = ["a@x"]"#,
        "[[user]]",
        r#"name = "b""#,
        "from = []",
        "[[user]]",
        r#"name = "c""#,
    ]));
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                6,
                8,
                r#"user "b" has no `from`, and is not the default user: no mail would ever be theirs"#
            ),
            (
                7,
                1,
                r#"user "c" has no `from`, and is not the default user: no mail would ever be theirs"#
            ),
        ]
    );
    assert!(
        d[0].help
            .as_deref()
            .is_some_and(|h| h.contains("default = true"))
    );

    // with a default user elsewhere, the help does not suggest a second one
    let (line, col, _, help) = one(&doc(&[
        "[[user]]",
        r#"name = "a""#,
        "default = true",
        "[[user]]",
        r#"name = "b""#,
    ]));
    assert_eq!((line, col), (4, 1));
    assert!(!help.contains("default"), "{help}");

    // the default user, explicit or the only one, may have no `from`
    parse(&doc(&[
        "[[user]]",
        r#"name = "a""#,
        r#"from = ["a@x"]"#,
        "[[user]]",
        r#"name = "b""#,
        "from = []",
        "default = true",
    ]));
    parse(&doc(&["[[user]]", r#"name = "a""#, "from = []"]));
}

#[test]
fn a_user_is_required() {
    for text in ["", "[agent]\n", "user = []\n"] {
        let (line, col, message, help) = one(text);
        assert_eq!((line, col), (1, 1));
        assert_eq!(message, "no [[user]]: mail needs a user to belong to");
        assert!(
            help.contains("[[user]]") && help.contains(r#"name = "#),
            "{help}"
        );
    }
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let d = diags(&doc(&[
        "[agent]",
        r#"source = "nm""#,
        "[[link]]",
        r#"name = "Home""#,
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        "port = 0",
        "[[user]]",
        r#"name = "u""#,
        r#"routes = { home = ["s"] }"#,
    ]));
    let got: Vec<_> = d.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(
        got,
        [(2, 10), (3, 1), (4, 8), (5, 1), (8, 8), (11, 12), (11, 20)]
    );
    let shown = Diagnostics(d).to_string();
    assert_eq!(shown.lines().count(), 14, "{shown}");
    assert!(shown.starts_with("t.toml:2:10: error: unknown source \"nm\"\n  help: "));
}

// ---- matching -------------------------------------------------------------------------------

#[test]
fn link_match_globs_and_fields() {
    let wifi = LinkFacts {
        id: "Home 5G".into(),
        uuid: "0b1c".into(),
        conn_type: "802-11-wireless".into(),
        interface: "wlp2s0".into(),
        ssid: Some("HomeNet".into()),
        gateway: Some("192.0.2.1".into()),
        domains: vec!["lan".into(), "Home.Example.".into()],
        addresses: vec!["192.0.2.10".parse().expect("an address")],
        metered: false,
    };
    let m = |f: fn(&mut LinkMatch)| {
        let mut m = LinkMatch::default();
        f(&mut m);
        m.matches(&wifi)
    };
    assert!(LinkMatch::default().matches(&wifi));
    assert!(LinkMatch::default().is_empty());
    assert!(m(|m| m.id = Some("Home*".into())));
    assert!(!m(|m| m.id = Some("home*".into())), "id is case-sensitive");
    assert!(m(|m| m.uuid = Some("0b1?".into())));
    assert!(m(|m| m.conn_type = Some("802-11-wireless".into())));
    assert!(m(|m| m.interface = Some("wl*".into())));
    assert!(!m(|m| m.interface = Some("eth*".into())));
    assert!(m(|m| m.ssid = Some("Home[A-Z]et".into())));
    assert!(m(|m| m.gateway = Some("192.0.2.*".into())));
    assert!(!m(|m| m.gateway = Some("198.51.100.*".into())));
    // domain: any of the link's domains, case-insensitive, trailing dot ignored
    assert!(m(|m| m.domain = Some("home.example".into())));
    assert!(m(|m| m.domain = Some("lan".into())));
    assert!(!m(|m| m.domain = Some("office.example".into())));
    // AND of every field given
    assert!(m(|m| {
        m.conn_type = Some("802-11-*".into());
        m.ssid = Some("HomeNet".into());
    }));
    assert!(!m(|m| {
        m.conn_type = Some("802-11-*".into());
        m.ssid = Some("Cafe".into());
    }));

    // a field given but absent from the facts does not match
    let wired = LinkFacts {
        id: "Wired".into(),
        interface: "eth0".into(),
        ..LinkFacts::default()
    };
    let ssid_any = LinkMatch {
        ssid: Some("*".into()),
        ..LinkMatch::default()
    };
    assert!(!ssid_any.matches(&wired));
    let gateway_any = LinkMatch {
        gateway: Some("*".into()),
        ..LinkMatch::default()
    };
    assert!(!gateway_any.matches(&wired));
    let domain_any = LinkMatch {
        domain: Some("*".into()),
        ..LinkMatch::default()
    };
    assert!(!domain_any.matches(&wired));
    // an invalid glob (not possible from a file) matches nothing
    let invalid = LinkMatch {
        id: Some("[".into()),
        ..LinkMatch::default()
    };
    assert!(!invalid.matches(&facts("[")));
}

#[test]
fn first_matching_link_rule_wins() {
    let c = parse(&doc(&[
        "[[link]]",
        r#"name = "office""#,
        r#"match = { interface = "eth*", domain = "corp.example" }"#,
        "[[link]]",
        r#"name = "wired""#,
        r#"match = { interface = "eth*" }"#,
        "[[link]]",
        r#"name = "also-wired""#,
        r#"match = { type = "802-3-ethernet" }"#,
        USER,
    ]));
    let eth = |domains: &[&str]| LinkFacts {
        id: "Wired connection 1".into(),
        conn_type: "802-3-ethernet".into(),
        interface: "eth0".into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        ..LinkFacts::default()
    };
    let link_of = |f: &LinkFacts| c.match_link(f).map(|l| l.name.as_str());
    assert_eq!(link_of(&eth(&["corp.example"])), Some("office"));
    assert_eq!(link_of(&eth(&[])), Some("wired"));
    assert_eq!(
        c.link("also-wired").map(|l| l.name.as_str()),
        Some("also-wired")
    );
    assert!(c.link("nope").is_none());
}

#[test]
fn user_for_sender_first_match_then_default() {
    let mut c = Config::embedded_default();
    c.users = vec![
        user("work", &["*@corp.example"], false),
        user("alice", &["alice@*", "ALICE.*@home.example"], false),
        user("fallback", &["nobody@nowhere"], true),
    ];
    let user_of = |c: &Config, s: &str| c.user_for_sender(s).map(|u| u.name.clone());
    // first match in order: "alice@corp.example" matches both work and alice
    assert_eq!(user_of(&c, "alice@corp.example").as_deref(), Some("work"));
    assert_eq!(user_of(&c, "Alice@Home.Example").as_deref(), Some("alice"));
    assert_eq!(
        user_of(&c, "alice.lists@HOME.example").as_deref(),
        Some("alice")
    );
    assert_eq!(user_of(&c, "bob@else.example").as_deref(), Some("fallback"));
    assert_eq!(user_of(&c, "").as_deref(), Some("fallback"));
    assert_eq!(c.default_user().map(|u| u.name.as_str()), Some("fallback"));

    // no explicit default, several users: no match, no user
    c.users[2].default = false;
    assert_eq!(user_of(&c, "bob@else.example"), None);
    assert!(c.default_user().is_none());
    // the only user is the default
    c.users.truncate(1);
    assert_eq!(user_of(&c, "bob@else.example").as_deref(), Some("work"));
    c.users.clear();
    assert_eq!(user_of(&c, "bob@else.example"), None);

    assert!(user("x", &["*"], false).matches_sender("Anyone@Anywhere"));
    assert!(!user("x", &[], true).matches_sender("a@b"));
}

#[test]
fn relays_for_exact_then_star() {
    let c = parse(&doc(&[
        "[[link]]",
        r#"name = "isp-a""#,
        r#"match = { id = "A" }"#,
        "[[link]]",
        r#"name = "isp-b""#,
        r#"match = { id = "B" }"#,
        "[[relay]]",
        r#"name = "ra""#,
        r#"host = "a""#,
        r#"tls = "tls""#,
        "[[relay]]",
        r#"name = "rb""#,
        r#"host = "b""#,
        r#"tls = "tls""#,
        "[[user]]",
        r#"name = "u""#,
        r#"routes = { isp-a = ["ra", "rb"], isp-b = [], "*" = ["rb"] }"#,
    ]));
    let u = c.user("u").expect("u");
    let names =
        |r: Option<&[RelayName]>| r.map(|r| r.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(
        names(u.relays_for("isp-a")),
        Some(vec!["ra".to_string(), "rb".to_string()])
    );
    // an empty list holds, rather than falling back to "*"
    assert_eq!(names(u.relays_for("isp-b")), Some(vec![]));
    assert_eq!(names(u.relays_for("other")), Some(vec!["rb".to_string()]));
    let no_star = user("v", &[], true);
    assert_eq!(no_star.relays_for("isp-a"), None);
}

// ---- paths ----------------------------------------------------------------------------------

#[test]
fn xdg_paths() {
    use std::ffi::OsString;
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let both = env(&[("XDG_CONFIG_HOME", "/xdg/config"), ("HOME", "/home/a")]);
    assert_eq!(
        xdg_dir_from(both, "XDG_CONFIG_HOME", ".config"),
        Some(PathBuf::from("/xdg/config"))
    );
    let home = env(&[("HOME", "/home/a")]);
    assert_eq!(
        xdg_dir_from(home, "XDG_DATA_HOME", ".local/share"),
        Some(PathBuf::from("/home/a/.local/share"))
    );
    // relative XDG values are ignored, as the spec says
    let relative = env(&[("XDG_DATA_HOME", "data"), ("HOME", "/home/a")]);
    assert_eq!(
        xdg_dir_from(relative, "XDG_DATA_HOME", ".local/share"),
        Some(PathBuf::from("/home/a/.local/share"))
    );
    assert_eq!(
        xdg_dir_from(env(&[]), "XDG_DATA_HOME", ".local/share"),
        None
    );

    // the real functions end in the right names
    if let Some(p) = default_config_path() {
        assert!(p.ends_with("linkrelay/config.toml"));
    }
    if let Some(p) = default_data_dir() {
        assert!(p.ends_with("linkrelay"));
    }
}

// ---- [submission] ---------------------------------------------------------------------------

#[test]
fn submission_is_a_private_socket_by_default_and_tcp_when_asked() {
    let c = parse(USER);
    assert_eq!(c.submission, SubmissionSettings::default());
    assert!(c.submission.listen.is_empty());
    assert!(c.submission.socket);
    let c = parse(&doc(&[
        "[submission]",
        r#"listen = ["127.0.0.1:2525", "[::1]:2525"]"#,
        "socket = false",
        "max_sessions = 4",
        "max_recipients = 10",
        r#"timeout = "30s""#,
        r#"data_timeout = "2m""#,
        USER,
    ]));
    let s = &c.submission;
    let addrs: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:2525", "[::1]:2525"]);
    assert!(!s.socket);
    assert_eq!((s.max_sessions, s.max_recipients), (4, 10));
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.data_timeout, Duration::from_secs(120));
}

#[test]
fn submission_listens_only_on_this_machine() {
    let (line, col, message, help) = one(&doc(&[
        "[submission]",
        r#"listen = ["127.0.0.1:2525", "0.0.0.0:2525"]"#,
        USER,
    ]));
    assert_eq!((line, col), (2, 29));
    assert_eq!(
        message,
        "\"0.0.0.0:2525\" is not on this machine: the listener takes mail only from local programs"
    );
    assert!(help.contains("127.0.0.1 or [::1]"), "{help}");
    for (bad, message) in [
        (
            r#"listen = ["localhost:2525"]"#,
            "is not an address and port",
        ),
        (r#"listen = ["::1:2525"]"#, "is not an address and port"),
        (r#"listen = ["127.0.0.1:0"]"#, "has no port"),
        (r#"listen = "127.0.0.1:2525""#, "must be an array"),
        ("max_sessions = 0", "must be more than 0"),
        ("max_recipients = -1", "must be more than 0"),
        (r#"timeout = "0s""#, "must be more than 0"),
        ("sockets = true", "did you mean"),
    ] {
        let d = diags(&doc(&["[submission]", bad, USER]));
        let text = format!("{}", Diagnostics(d.clone()));
        assert_eq!(d.len(), 1, "{bad}: {text}");
        assert!(text.contains(message), "{bad}: {text}");
    }
}

// ---- [notify] -------------------------------------------------------------------------------

#[test]
fn notify_defaults_and_values() {
    let c = parse(USER);
    assert_eq!(c.notify, NotifySettings::default());
    assert!(c.notify.enabled);
    assert_eq!(c.notify.after, Duration::from_secs(3600));
    let c = parse(&doc(&[
        "[notify]",
        "enabled = false",
        r#"after = "90m""#,
        USER,
    ]));
    assert!(!c.notify.enabled);
    assert_eq!(c.notify.after, Duration::from_secs(90 * 60));
}

#[test]
fn notify_mistakes_point_at_the_value() {
    let (line, col, message, help) = one(&doc(&["[notify]", r#"after = "0s""#, USER]));
    assert_eq!((line, col), (2, 9));
    assert_eq!(message, "`after` in [notify] must be more than 0");
    assert!(help.contains("enabled = false"), "{help}");

    let (line, col, message, _) = one(&doc(&["[notify]", r#"after = "soon""#, USER]));
    assert_eq!((line, col), (2, 9));
    assert!(
        message.starts_with("invalid duration \"soon\" for `after`"),
        "{message}"
    );

    let (line, col, message, _) = one(&doc(&["[notify]", r#"enabled = "yes""#, USER]));
    assert_eq!((line, col), (2, 11));
    assert!(message.contains("must be true or false"), "{message}");

    let (line, col, message, help) = one(&doc(&["[notify]", "afterr = \"1h\"", USER]));
    assert_eq!((line, col), (2, 1));
    assert_eq!(message, "unknown key `afterr` in [notify]");
    assert!(help.contains("did you mean `after`?"), "{help}");
}

#[test]
fn address_prefixes_match_any_of_the_link_addresses() {
    let c = parse(&doc(&[
        "[[link]]",
        "name = \"v4\"",
        "match = { address = \"192.0.2.0/24\" }",
        "[[link]]",
        "name = \"v6\"",
        "match = { address = \"2001:db8:b::/48\", interface = \"wwan*\" }",
        "[[link]]",
        "name = \"host\"",
        "match = { address = \"198.51.100.7\" }",
        USER,
    ]));
    let with = |iface: &str, addrs: &[&str]| LinkFacts {
        interface: iface.into(),
        addresses: addrs
            .iter()
            .map(|a| a.parse().expect("an address"))
            .collect(),
        ..LinkFacts::default()
    };
    let name = |f: &LinkFacts| c.match_link(f).map(|l| l.name.clone());
    assert_eq!(
        name(&with("eth0", &["2001:db8::1", "192.0.2.55"])),
        Some("v4".into())
    );
    assert_eq!(name(&with("eth0", &["192.0.3.1"])), None);
    assert_eq!(
        name(&with("wwan0", &["2001:db8:b:1::9"])),
        Some("v6".into())
    );
    // every field must match: right prefix, wrong interface
    assert_eq!(name(&with("eth0", &["2001:db8:b:1::9"])), None);
    assert_eq!(name(&with("eth0", &["2001:db8:c::9"])), None);
    // a bare address is that one address
    assert_eq!(name(&with("ppp0", &["198.51.100.7"])), Some("host".into()));
    assert_eq!(name(&with("ppp0", &["198.51.100.8"])), None);
    // a link without addresses never matches an address rule
    assert_eq!(name(&with("wwan0", &[])), None);
    assert_eq!(
        c.links[2].matcher.address,
        Some("198.51.100.7/32".parse().expect("a network"))
    );
    assert_eq!(c.links[1].matcher.fields(), ["interface", "address"]);
}

#[test]
fn bad_address_prefixes_are_errors_at_their_position() {
    let (line, col, message, help) = one(&doc(&[
        "[[link]]",
        "name = \"x\"",
        "match = { address = \"192.0.2.0/33\" }",
        USER,
    ]));
    assert_eq!((line, col), (3, 21));
    assert!(
        message.starts_with("invalid address prefix \"192.0.2.0/33\" for `address`"),
        "{message}"
    );
    assert!(help.contains("192.0.2.0/24"), "{help}");

    let (line, col, message, _) = one(&doc(&[
        "[[link]]",
        "name = \"x\"",
        "match = { interface = \"eth0\", address = \"isp-a\" }",
        USER,
    ]));
    assert_eq!((line, col), (3, 41));
    assert!(message.contains("\"isp-a\""), "{message}");

    let (line, col, message, help) = one(&doc(&[
        "[[link]]",
        "name = \"x\"",
        "match = { address = \"192.0.2.1/24\" }",
        USER,
    ]));
    assert_eq!((line, col), (3, 21));
    assert_eq!(
        message,
        "`address` \"192.0.2.1/24\" has bits set after its first 24 bits"
    );
    assert_eq!(
        help,
        "write address = \"192.0.2.0/24\" (the network), or address = \"192.0.2.1\" for this one address"
    );

    let (_, _, message, _) = one(&doc(&[
        "[[link]]",
        "name = \"x\"",
        "match = { address = 24 }",
        USER,
    ]));
    assert!(message.contains("must be a string"), "{message}");
}

#[test]
fn notes_say_which_fields_the_source_cannot_see() {
    let rules = [
        "[[link]]",
        "name = \"nm-only\"",
        "match = { ssid = \"Home*\", domain = \"x.example\" }",
        "[[link]]",
        "name = \"by-id\"",
        "match = { id = \"ISP-A\" }",
        "[[link]]",
        "name = \"kernel\"",
        "match = { interface = \"ppp*\", address = \"192.0.2.0/24\", gateway = \"192.0.2.1\", type = \"ppp\" }",
        "[[link]]",
        "name = \"nm-type\"",
        "match = { type = \"802-3-ethernet\" }",
    ];
    let with_source = |source: &str| {
        let mut lines = vec!["[agent]".to_string(), format!("source = \"{source}\"")];
        lines.extend(rules.iter().map(|l| l.to_string()));
        lines.push(USER.into());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        parse(&doc(&refs)).notes
    };

    let netlink = with_source("netlink");
    let shown: Vec<String> = netlink.iter().map(|n| n.to_string()).collect();
    assert_eq!(netlink.len(), 3, "{shown:#?}");
    assert_eq!((netlink[0].line, netlink[0].col), (5, 11));
    assert!(
        netlink[0].message.contains(
            "matches on `ssid`, `domain`, which the netlink source cannot see, so it never matches"
        ),
        "{shown:#?}"
    );
    assert!(shown[0].starts_with("t.toml:5:11: note: link \"nm-only\""));
    assert_eq!(netlink[1].line, 8);
    assert!(
        netlink[1].message.contains("match on `interface` instead"),
        "{shown:#?}"
    );
    assert_eq!(netlink[2].line, 14);
    assert!(
        netlink[2]
            .message
            .contains("\"802-3-ethernet\" is a NetworkManager connection type"),
        "{shown:#?}"
    );

    let auto = with_source("auto");
    assert_eq!(auto.len(), 2, "{auto:#?}");
    assert!(
        auto[0]
            .message
            .contains("matches only while NetworkManager runs")
    );
    assert_eq!(auto[1].line, 8);

    assert!(with_source("networkmanager").is_empty());
    assert!(
        SourceKind::Netlink
            .describe_fields()
            .contains("interface, type, gateway, address")
    );
    assert_eq!(SourceKind::NetworkManager.visible_fields().len(), 8);
}

// ---- credentials from the Secret Service; plaintext AUTH -----------------------------------

#[test]
fn password_secret_is_a_table_of_attributes() {
    let c = parse(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "starttls""#,
        r#"username = "bob""#,
        r#"password_secret = { service = "smtp", username = "bob", host = "smtp.isp-b.example" }"#,
        USER,
    ]));
    let r = c.relay("r").expect("relay r");
    let auth = r.auth.as_ref().expect("auth");
    let Secret::Keyring(attrs) = &auth.secret else {
        panic!("password_secret read as {:?}", auth.secret);
    };
    assert_eq!(
        attrs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["host=smtp.isp-b.example", "service=smtp", "username=bob"]
    );
    assert!(!r.dangerous_plaintext_auth);
}

#[test]
fn password_secret_problems_point_at_the_attribute() {
    let relay = |secret: &str| {
        doc(&[
            "[[relay]]",
            r#"name = "r""#,
            r#"host = "h""#,
            r#"tls = "tls""#,
            r#"username = "bob""#,
            secret,
            USER,
        ])
    };
    let (line, col, message, help) = one(&relay("password_secret = {}"));
    assert_eq!((line, col), (6, 19));
    assert_eq!(
        message,
        "empty `password_secret`: it would match any item of the keyring"
    );
    assert!(help.starts_with("write password_secret = {"), "{help}");

    let (line, col, message, _) = one(&relay(
        r#"password_secret = { service = "smtp", port = 587 }"#,
    ));
    assert_eq!((line, col), (6, 46));
    assert_eq!(
        message,
        "attribute `port` of `password_secret` must be a string, not an integer"
    );

    let (line, col, message, _) = one(&relay(r#"password_secret = { service = "" }"#));
    assert_eq!((line, col), (6, 31));
    assert_eq!(message, "an attribute value of `password_secret` is empty");

    let (line, col, message, _) = one(&relay(r#"password_secret = "smtp/bob""#));
    assert_eq!((line, col), (6, 19));
    assert_eq!(
        message,
        "`password_secret` in [[relay]] must be a table, not a string"
    );

    let many = (0..17)
        .map(|i| format!("a{i} = \"v\""))
        .collect::<Vec<_>>()
        .join(", ");
    let (_, _, message, _) = one(&relay(&format!("password_secret = {{ {many} }}")));
    assert_eq!(
        message,
        "`password_secret` has 17 attributes; at most 16 are allowed"
    );
}

#[test]
fn a_password_command_with_a_username_is_how_to_log_in() {
    let c = parse(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"username = "bob""#,
        r#"password_command = "pass show r""#,
        USER,
    ]));
    let r = c.relay("r").expect("relay r");
    assert_eq!(
        r.auth,
        Some(Auth {
            username: "bob".into(),
            mechanism: Mechanism::Password,
            secret: Secret::Command("pass show r".into()),
        })
    );
}

#[test]
fn one_password_source_with_a_username() {
    let (line, col, message, help) = one(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"username = "bob""#,
        r#"password_command = "pass show r""#,
        r#"password_secret = { service = "smtp" }"#,
        USER,
    ]));
    assert_eq!((line, col), (7, 1));
    assert_eq!(
        message,
        r#"relay "r" has both `password_command` and `password_secret`"#
    );
    assert_eq!(help, "keep one of them: the password comes from one place");

    let (line, col, message, _) = one(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"password_secret = { service = "smtp" }"#,
        USER,
    ]));
    assert_eq!((line, col), (5, 1));
    assert_eq!(
        message,
        r#"relay "r" has a `password_secret` but no `username`"#
    );
}

#[test]
fn an_inline_password_is_refused_and_the_help_names_both_sources() {
    let (line, col, message, help) = one(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"username = "bob""#,
        r#"password_secret = { service = "smtp" }"#,
        r#"  password = "hunter2""#,
        USER,
    ]));
    assert_eq!((line, col), (7, 3));
    assert_eq!(message, "passwords are not written in the config file");
    assert!(help.contains("password_secret = {"), "{help}");
    assert!(help.contains("password_command = "), "{help}");
    assert!(!help.contains("hunter2") && !message.contains("hunter2"));
}

#[test]
fn dangerous_plaintext_auth_only_with_tls_none_and_a_username() {
    let relay = |tls: &str, user: bool| {
        let mut lines = vec![
            "[[relay]]".to_owned(),
            r#"name = "r""#.to_owned(),
            r#"host = "smtp.example.net""#.to_owned(),
            format!(r#"tls = "{tls}""#),
            "dangerous_plaintext_auth = true".to_owned(),
        ];
        if user {
            lines.push(r#"username = "bob""#.to_owned());
            lines.push(r#"password_command = "pass show r""#.to_owned());
        }
        lines.push(USER.to_owned());
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        doc(&refs)
    };
    let c = parse(&relay("none", true));
    assert!(c.relay("r").expect("r").dangerous_plaintext_auth);

    let (line, col, message, help) = one(&relay("starttls", true));
    assert_eq!((line, col), (5, 28));
    assert_eq!(
        message,
        r#"`dangerous_plaintext_auth` is only for tls = "none", and relay "r" has tls = "starttls" (its password is already encrypted)"#
    );
    assert_eq!(help, "remove dangerous_plaintext_auth");

    let (_, _, message, _) = one(&relay("none", false));
    assert_eq!(
        message,
        r#"`dangerous_plaintext_auth` is set but relay "r" has no `username`: there is no password to send"#
    );

    let (_, _, message, _) = one(&relay("none", true).replace("= true", "= \"yes\""));
    assert_eq!(
        message,
        "`dangerous_plaintext_auth` in [[relay]] must be true or false, not a string"
    );
}

// ---- OAuth2 -----------------------------------------------------------------------------------

/// A relay `r` logging in as bob with `auth`, then the given lines (an `[relay.oauth2]` table).
fn oauth_relay(auth: &str, lines: &[&str]) -> String {
    let mut all = vec![
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "smtp.example.net""#,
        r#"tls = "starttls""#,
        r#"username = "bob@example.net""#,
        auth,
    ];
    all.extend_from_slice(lines);
    all.push(USER);
    doc(&all)
}

fn oauth2_of(c: &Config) -> (&Auth, &OAuth2) {
    let auth = c.relay("r").and_then(|r| r.auth.as_ref()).expect("auth");
    let Secret::OAuth2(o) = &auth.secret else {
        panic!("not oauth2: {:?}", auth.secret);
    };
    (auth, o)
}

#[test]
fn a_google_relay_takes_its_endpoints_and_scope_from_the_preset_and_logs_in_by_browser() {
    let c = parse(&oauth_relay(
        r#"auth = "xoauth2""#,
        &[
            "[relay.oauth2]",
            r#"provider = "google""#,
            r#"client_id = "1234-abc.apps.googleusercontent.com""#,
            r#"client_secret_command = "pass show google/secret""#,
        ],
    ));
    let (auth, o) = oauth2_of(&c);
    assert_eq!(auth.mechanism, Mechanism::Xoauth2);
    assert_eq!(auth.username, "bob@example.net");
    assert_eq!(o.provider, Some(Provider::Google));
    assert_eq!(o.token_url, "https://oauth2.googleapis.com/token");
    assert_eq!(
        o.authorization_url.as_deref(),
        Some("https://accounts.google.com/o/oauth2/v2/auth")
    );
    assert_eq!(o.scopes, ["https://mail.google.com/"]);
    assert_eq!(o.login, LoginFlow::Browser);
    assert_eq!(o.redirect_host, "127.0.0.1");
    assert_eq!(o.token_store, TokenStore::Keyring);
    assert_eq!(
        o.client_secret_command.as_deref(),
        Some("pass show google/secret")
    );
}

#[test]
fn a_microsoft_relay_uses_its_tenant_and_logs_in_with_a_device_code() {
    let c = parse(&oauth_relay(
        r#"auth = "xoauth2""#,
        &[
            "[relay.oauth2]",
            r#"provider = "microsoft""#,
            r#"tenant = "contoso.onmicrosoft.com""#,
            r#"client_id = "00000000-1111-2222-3333-444444444444""#,
        ],
    ));
    let (_, o) = oauth2_of(&c);
    assert_eq!(
        o.device_url.as_deref(),
        Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode")
    );
    assert_eq!(
        o.scopes,
        ["https://outlook.office.com/SMTP.Send", "offline_access"]
    );
    assert_eq!(o.login, LoginFlow::Device);
    assert_eq!(o.redirect_host, "localhost");
    assert_eq!(o.revocation_url, None);
}

#[test]
fn explicit_endpoints_stand_alone_and_a_token_file_is_found_beside_the_config() {
    let text = oauth_relay(
        r#"auth = "oauthbearer""#,
        &[
            "[relay.oauth2]",
            r#"token_url = "http://127.0.0.1:8080/token""#,
            r#"device_url = "http://[::1]:8080/device""#,
            r#"scopes = ["openid", "offline_access", "smtp"]"#,
            r#"client_id = "linkrelay""#,
            r#"token_file = "tokens/r.token""#,
        ],
    );
    let c =
        Config::parse(&text, Path::new("/home/bob/.config/linkrelay/config.toml")).expect("valid");
    let (auth, o) = oauth2_of(&c);
    assert_eq!(auth.mechanism, Mechanism::OAuthBearer);
    assert_eq!(o.provider, None);
    assert_eq!(o.authorization_url, None);
    assert_eq!(o.login, LoginFlow::Device);
    assert_eq!(o.scopes, ["openid", "offline_access", "smtp"]);
    assert_eq!(
        o.token_store,
        TokenStore::File("/home/bob/.config/linkrelay/tokens/r.token".into())
    );
}

#[test]
fn a_password_command_can_print_an_access_token_for_xoauth2() {
    let c = parse(&oauth_relay(
        r#"auth = "xoauth2""#,
        &[r#"password_command = "oama access bob@example.net""#],
    ));
    let auth = c.relay("r").and_then(|r| r.auth.as_ref()).expect("auth");
    assert_eq!(auth.mechanism, Mechanism::Xoauth2);
    assert_eq!(
        auth.secret,
        Secret::Command("oama access bob@example.net".into())
    );
}

#[test]
fn oauth2_settings_that_cannot_work_are_reported_at_their_key() {
    let google = |extra: &[&str]| {
        let mut lines = vec!["[relay.oauth2]", r#"provider = "google""#];
        lines.extend_from_slice(extra);
        oauth_relay(r#"auth = "xoauth2""#, &lines)
    };

    let (line, col, message, help) = one(&google(&[]));
    assert_eq!((line, col), (7, 1));
    assert_eq!(message, r#"the `oauth2` of relay "r" has no `client_id`"#);
    assert!(help.contains("docs/oauth2.md"), "{help}");

    let (line, col, message, help) = one(&google(&[
        r#"client_id = "x""#,
        r#"token_url = "http://login.example.net/token""#,
    ]));
    assert_eq!((line, col), (10, 13));
    assert_eq!(
        message,
        r#"`token_url` "http://login.example.net/token" is not https: tokens would cross the network in clear"#
    );
    assert!(help.contains("https://"), "{help}");

    let (line, col, message, _) = one(&google(&[r#"client_id = "x""#, r#"tenant = "t""#]));
    assert_eq!((line, col), (10, 10));
    assert_eq!(
        message,
        r#"`tenant` is only used with provider = "microsoft""#
    );

    let (_, _, message, help) = one(&google(&[r#"client_id = "x""#, r#"provider = "gogle""#]));
    assert!(message.starts_with("TOML syntax"), "{message}: {help}");

    let (line, col, message, help) = one(&oauth_relay(
        r#"auth = "xoauth2""#,
        &[
            "[relay.oauth2]",
            r#"provider = "gogle""#,
            r#"client_id = "x""#,
        ],
    ));
    assert_eq!((line, col), (8, 12));
    assert_eq!(message, r#"unknown OAuth2 provider "gogle""#);
    assert!(help.starts_with(r#"did you mean "google"?"#), "{help}");

    let (line, col, message, _) = one(&oauth_relay(
        r#"auth = "xoauth2""#,
        &[
            "[relay.oauth2]",
            r#"token_url = "https://login.example.net/token""#,
            r#"authorization_url = "https://login.example.net/authorize""#,
            r#"client_id = "x""#,
            r#"login = "device""#,
        ],
    ));
    assert_eq!((line, col), (11, 9));
    assert_eq!(message, r#"login = "device" needs a `device_url`"#);

    let (line, col, message, _) = one(&oauth_relay(
        r#"auth = "xoauth2""#,
        &["[relay.oauth2]", r#"client_id = "x""#],
    ));
    assert_eq!((line, col), (7, 1));
    assert_eq!(
        message,
        r#"the `oauth2` of relay "r" has no `token_url` and no `provider`"#
    );

    let (line, col, message, help) = one(&google(&[
        r#"client_id = "x""#,
        r#"client_secret = "s3cret""#,
    ]));
    assert_eq!((line, col), (10, 1));
    assert_eq!(message, "client secrets are not written in the config file");
    assert!(!help.contains("s3cret"));
}

#[test]
fn a_bearer_mechanism_needs_a_username_and_one_token_source() {
    let (line, col, message, help) = one(&oauth_relay(r#"auth = "xoauth2""#, &[]));
    assert_eq!((line, col), (5, 1));
    assert_eq!(
        message,
        r#"relay "r" has auth = "xoauth2" but no token source"#
    );
    assert!(help.contains("linkrelay login r"), "{help}");

    let (line, col, message, _) = one(&oauth_relay(
        r#"auth = "oauthbearer""#,
        &[
            r#"password_command = "oama access bob""#,
            "[relay.oauth2]",
            r#"provider = "google""#,
            r#"client_id = "x""#,
        ],
    ));
    assert_eq!((line, col), (8, 8));
    assert_eq!(
        message,
        r#"relay "r" has both `password_command` and [relay.oauth2]"#
    );

    let (line, col, message, help) = one(&oauth_relay(
        r#"auth = "password""#,
        &[
            "[relay.oauth2]",
            r#"provider = "google""#,
            r#"client_id = "x""#,
        ],
    ));
    assert_eq!((line, col), (7, 8));
    assert_eq!(
        message,
        r#"relay "r" has [relay.oauth2] but logs in with a password"#
    );
    assert!(help.contains(r#"auth = "xoauth2""#), "{help}");

    let (line, col, message, _) = one(&doc(&[
        "[[relay]]",
        r#"name = "r""#,
        r#"host = "h""#,
        r#"tls = "tls""#,
        r#"auth = "xoauth2""#,
        USER,
    ]));
    assert_eq!((line, col), (5, 1));
    assert_eq!(
        message,
        r#"relay "r" has auth = "xoauth2" but no `username`"#
    );

    let (_, _, message, help) = one(&oauth_relay(r#"auth = "oauth""#, &[]));
    assert_eq!(message, r#"unknown auth mechanism "oauth""#);
    assert!(help.contains("xoauth2"), "{help}");
}
