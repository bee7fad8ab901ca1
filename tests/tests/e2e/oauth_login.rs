//! `linkrelay login` and `logout` against a real OAuth2 provider (panva's oidc-provider):
//! the device flow with the test typing the code into the provider's form, the browser flow
//! with PKCE and a loopback redirect (an `xdg-open` of the test's own that hands the URL to
//! the test, which then acts as the browser), where the refresh token goes, and what the user
//! reads when the client id is wrong or the provider is down. No root, no relay: these are
//! the CLI's part alone.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use linkrelay_tests::config::{Config, Link, Relay, User, Value};
use linkrelay_tests::keyring::Keyring;
use linkrelay_tests::oidc::{Browser, CLIENT_ID, OidcProvider};
use linkrelay_tests::world::World;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// A config whose relay `mail` (never reached here) gets its tokens from `provider`, as
/// `client_id`; `extra` adds keys to its `[relay.oauth2]`.
fn config(
    token_url: &str,
    device_url: &str,
    auth_url: &str,
    client_id: &str,
    extra: Vec<(&str, Value)>,
) -> String {
    let mut oauth2 = vec![
        ("token_url", Value::from(token_url)),
        ("device_url", Value::from(device_url)),
        ("authorization_url", Value::from(auth_url)),
        ("scopes", Value::from(["openid", "offline_access"])),
        ("client_id", Value::from(client_id)),
    ];
    oauth2.extend(extra);
    Config::new()
        .link(Link::new("lan").id("LAN"))
        .relay(Relay::local("mail", 9).tls("starttls").oauth2(
            "bob",
            "xoauth2",
            Value::inline(oauth2),
        ))
        .user(User::new("bob").from(["*"]).route("lan", ["mail"]))
        .to_string()
}

fn provider_config(p: &OidcProvider, client_id: &str, extra: Vec<(&str, Value)>) -> String {
    config(
        &p.token_url(),
        &p.device_url(),
        &p.authorization_url(),
        client_id,
        extra,
    )
}

/// The keyring item's attributes for relay `mail`, account bob.
pub fn item() -> BTreeMap<String, String> {
    [
        ("xdg:schema", "org.linkrelay.OAuth2"),
        ("relay", "mail"),
        ("username", "bob"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A running `linkrelay login ARGS`, its output read line by line.
pub struct Login {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: String,
}

impl Login {
    pub fn start(w: &World, args: &[&str], path: Option<&std::path::Path>) -> Login {
        let mut cmd = w.cli();
        cmd.arg("login").args(args);
        if let Some(path) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{old}", path.display()));
        }
        let mut child = tokio::process::Command::from(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Login {
            child,
            lines,
            seen: String::new(),
        }
    }

    /// Reads lines until one contains `text`; returns it.
    pub async fn line_with(&mut self, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(text) {
                        return line;
                    }
                }
                Ok(_) => panic!("login ended without {text:?}: {}", self.seen),
                Err(_) => panic!("no {text:?} from login in time: {}", self.seen),
            }
        }
    }

    /// Waits for the end: (success, all it printed).
    pub async fn finish(mut self) -> (bool, String) {
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        let out = tokio::time::timeout(WAIT, self.child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        self.seen.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), self.seen)
    }
}

/// The word after "enter the code".
fn user_code(line: &str) -> String {
    line.split("enter the code ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned()
}

/// Logs bob in to relay `mail` by the device flow, the test typing the code.
pub async fn device_login(w: &World, provider: &OidcProvider) -> String {
    let mut login = Login::start(w, &["mail", "--device"], None);
    let line = login.line_with("enter the code").await;
    assert!(
        line.contains(&format!("open {}/device", provider.issuer())),
        "{line}"
    );
    let page = Browser::new(provider, "bob")
        .enter_device_code(&user_code(&line))
        .await
        .unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    let (ok, out) = login.finish().await;
    assert!(ok, "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_keeps_the_refresh_token_in_the_keyring_and_logout_forgets_it() {
    let provider = OidcProvider::start(Duration::from_secs(60)).unwrap();
    let w = World::new().unwrap();
    let keyring = Keyring::start(&w.session).await.unwrap();
    w.write_config(&provider_config(
        &provider,
        CLIENT_ID,
        vec![(
            "revocation_url",
            Value::from(provider.revocation_url().as_str()),
        )],
    ))
    .unwrap();

    let out = device_login(&w, &provider).await;
    assert!(out.contains("logged in to relay mail"), "{out}");
    assert!(out.contains("the keyring item"), "{out}");
    assert!(out.contains("linkrelayd is not running"), "{out}");
    let token = keyring.lookup(&item()).unwrap();
    assert!(provider.is_active(&token).await.unwrap());
    assert!(!out.contains(&token), "the token is never printed: {out}");

    let out = w.run_cli(&["logout", "mail"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("forgot the refresh token"), "{text}");
    assert!(text.contains("revoked it at the provider"), "{text}");
    assert!(keyring.lookup(&item()).is_err(), "the keyring item is gone");
    assert!(!provider.is_active(&token).await.unwrap(), "revoked");

    let again = w.run_cli(&["logout", "mail"]).unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("was not logged in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_login_with_pkce_comes_back_to_the_loopback_port_and_keeps_a_private_file() {
    let provider = OidcProvider::start(Duration::from_secs(60)).unwrap();
    let w = World::new().unwrap();
    let token_file = w.dir().join("tokens/mail.token");
    w.write_config(&provider_config(
        &provider,
        CLIENT_ID,
        vec![("token_file", Value::from(token_file.as_path()))],
    ))
    .unwrap();
    // The browser: an xdg-open that hands the address to the test.
    let bin = w.dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opened = w.dir().join("opened-url");
    let xdg_open = bin.join("xdg-open");
    std::fs::write(
        &xdg_open,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()),
    )
    .unwrap();
    std::fs::set_permissions(&xdg_open, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut login = Login::start(&w, &["mail", "--browser"], Some(&bin));
    login.line_with("Waiting for the browser").await;
    let url = std::fs::read_to_string(&opened).unwrap();
    assert!(url.starts_with(&provider.authorization_url()), "{url}");
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{url}"
    );
    let page = Browser::new(&provider, "bob").open(&url).await.unwrap();
    assert!(page.url.starts_with("http://127.0.0.1:"), "{}", page.url);
    assert!(
        page.body.contains("linkrelay is logged in"),
        "{}",
        page.body
    );
    let (ok, out) = login.finish().await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("the file {}", token_file.display())),
        "{out}"
    );

    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(provider.is_active(token.trim()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_id_and_a_provider_that_is_down_are_told_clearly() {
    let mut provider = OidcProvider::start(Duration::from_secs(60)).unwrap();
    let w = World::new().unwrap();
    let _keyring = Keyring::start(&w.session).await.unwrap();

    w.write_config(&provider_config(&provider, "not-registered", vec![]))
        .unwrap();
    let out = w.run_cli(&["login", "mail", "--device"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the provider refused: invalid_client"),
        "{err}"
    );
    assert!(
        err.contains("check client_id \"not-registered\""),
        "says what to check: {err}"
    );

    w.write_config(&provider_config(&provider, CLIENT_ID, vec![]))
        .unwrap();
    provider.stop();
    let out = w.run_cli(&["login", "mail", "--device"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach the provider"), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");

    let out = w.run_cli(&["login", "nosuch"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no relay named \"nosuch\""), "{err}");
}
