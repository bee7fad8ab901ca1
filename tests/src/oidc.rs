//! A real OAuth2 authorization server for tests: panva's oidc-provider (npm, in
//! `tests/oauth/`, installed by `scripts/install-test-deps` with `npm ci`) run by
//! `tests/oauth/server.mjs` on 127.0.0.1, with the device flow, PKCE (required), refresh
//! tokens, introspection and revocation, and access tokens as short-lived as a test wants.
//!
//! Two clients are registered: [`CLIENT_ID`], a public native client (no secret, loopback
//! redirects on any port) that linkrelay logs in as, and [`INTROSPECTOR`], the confidential
//! client Dovecot checks tokens with ([`OidcProvider::introspection_url`]).
//!
//! [`Browser`] plays the user's browser: it types a device code into the provider's form, or
//! follows a login URL to the loopback redirect, logging in with any name at the login form
//! (the account id is that name; introspection answers it as `sub`). Killed on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The public client linkrelay logs in as.
pub const CLIENT_ID: &str = "linkrelay";
/// The client Dovecot introspects tokens as, and its secret.
pub const INTROSPECTOR: (&str, &str) = ("dovecot", "dovecot-introspection-secret");

/// Where the server and its node_modules are.
pub fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oauth")
}

/// A running oidc-provider.
#[derive(Debug)]
pub struct OidcProvider {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider; its access tokens last `access_token_ttl`.
    pub fn start(access_token_ttl: Duration) -> anyhow::Result<OidcProvider> {
        let server = server_dir();
        if !server.join("node_modules/oidc-provider").is_dir() {
            bail!(
                "{} has no node_modules: run scripts/install-test-deps (npm ci)",
                server.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("linkrelay-oidc-")
            .tempdir()?;
        let settings = serde_json::json!({
            "access_token_ttl": access_token_ttl.as_secs().max(1),
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "token_endpoint_auth_method": "none",
                    "application_type": "native",
                    "grant_types": ["authorization_code", "refresh_token",
                                    "urn:ietf:params:oauth:grant-type:device_code"],
                    "response_types": ["code"],
                    "redirect_uris": ["http://127.0.0.1/"],
                },
                {
                    "client_id": INTROSPECTOR.0,
                    "client_secret": INTROSPECTOR.1,
                    "grant_types": [],
                    "response_types": [],
                    "redirect_uris": [],
                },
            ],
        });
        let settings_path = dir.path().join("settings.json");
        std::fs::write(&settings_path, settings.to_string())?;
        let out_path = dir.path().join("stdout");
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = Command::new("node")
            .arg(server.join("server.mjs"))
            .arg(&settings_path)
            .current_dir(&server)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(log)
            .spawn()
            .context("starting node (the OAuth2 tests need Node.js: scripts/install-test-deps)")?;
        let mut provider = OidcProvider {
            child: Some(child),
            port: 0,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(port) = out
                .lines()
                .find_map(|l| l.strip_prefix("listening "))
                .and_then(|p| p.trim().parse().ok())
            {
                provider.port = port;
                return Ok(provider);
            }
            if let Some(child) = provider.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("oidc-provider exited ({status}): {}", provider.log());
            }
            if Instant::now() > deadline {
                bail!("oidc-provider did not start: {}", provider.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// The authorization endpoint (browser logins).
    pub fn authorization_url(&self) -> String {
        format!("{}/auth", self.issuer())
    }

    /// The device authorization endpoint.
    pub fn device_url(&self) -> String {
        format!("{}/device/auth", self.issuer())
    }

    /// The revocation endpoint.
    pub fn revocation_url(&self) -> String {
        format!("{}/token/revocation", self.issuer())
    }

    /// The introspection endpoint with [`INTROSPECTOR`]'s credentials in it, for Dovecot.
    pub fn introspection_url(&self) -> String {
        format!(
            "http://{}:{}@127.0.0.1:{}/token/introspection",
            INTROSPECTOR.0, INTROSPECTOR.1, self.port
        )
    }

    /// What the server wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Revokes `token` (an access or refresh token of [`CLIENT_ID`]), as the client would.
    pub async fn revoke(&self, token: &str) -> anyhow::Result<()> {
        let reply = http()
            .post(self.revocation_url())
            .form(&[("token", token), ("client_id", CLIENT_ID)])
            .send()
            .await?;
        if !reply.status().is_success() {
            bail!("revocation answered {}", reply.status());
        }
        Ok(())
    }

    /// Ends every access token issued so far before its time (refresh tokens stay valid), as a
    /// provider does after a security event; how many it ended.
    pub async fn end_access_tokens(&self) -> anyhow::Result<u32> {
        let reply = http()
            .post(format!("{}/test/end-access-tokens", self.issuer()))
            .send()
            .await?;
        if !reply.status().is_success() {
            bail!("ending the access tokens answered {}", reply.status());
        }
        Ok(reply.text().await?.trim().parse()?)
    }

    /// Whether `token` is active, as Dovecot would be told.
    pub async fn is_active(&self, token: &str) -> anyhow::Result<bool> {
        let reply: serde_json::Value = http()
            .post(format!("{}/token/introspection", self.issuer()))
            .basic_auth(INTROSPECTOR.0, Some(INTROSPECTOR.1))
            .form(&[("token", token)])
            .send()
            .await?
            .json()
            .await?;
        Ok(reply["active"] == true)
    }

    /// Stops the server (a provider that is down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default()
}

/// The user's browser: cookies, forms, redirects followed one at a time.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    issuer: String,
    cookies: BTreeMap<String, String>,
    login: String,
}

/// A page the browser stopped at.
#[derive(Debug)]
pub struct Page {
    /// Its address.
    pub url: String,
    /// Its status.
    pub status: u16,
    /// Its text.
    pub body: String,
}

impl Browser {
    /// A browser at `provider` that logs in as `login` when asked.
    pub fn new(provider: &OidcProvider, login: &str) -> Browser {
        Browser {
            http: http(),
            issuer: provider.issuer(),
            cookies: BTreeMap::new(),
            login: login.to_owned(),
        }
    }

    /// Types `user_code` into the provider's device page, confirms, logs in and consents:
    /// the page it ends at.
    pub async fn enter_device_code(&mut self, user_code: &str) -> anyhow::Result<Page> {
        let device = format!("{}/device", self.issuer);
        let page = self.go(&device, None).await?;
        let xsrf = hidden(&page.body, "xsrf").context("the device page has no xsrf field")?;
        let page = self
            .go(&device, Some(&[("xsrf", &xsrf), ("user_code", user_code)]))
            .await?;
        if !page.body.contains("op.deviceConfirmForm") {
            bail!("no confirmation form after the code: {}", page.body);
        }
        let xsrf = hidden(&page.body, "xsrf").context("the confirm form has no xsrf field")?;
        self.go(
            &device,
            Some(&[
                ("xsrf", &xsrf),
                ("user_code", user_code),
                ("confirm", "yes"),
            ]),
        )
        .await
    }

    /// Opens `url` (a login page), logs in and consents, and follows the redirects to wherever
    /// they end (for a browser login, the loopback redirect of `linkrelay login`).
    pub async fn open(&mut self, url: &str) -> anyhow::Result<Page> {
        self.go(url, None).await
    }

    /// A request, then the redirects, answering the login form on the way.
    async fn go(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> anyhow::Result<Page> {
        let mut url = url.to_owned();
        let mut form: Option<Vec<(String, String)>> = form.map(|f| {
            f.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        for _ in 0..30 {
            let mut request = match &form {
                Some(fields) => self.http.post(&url).form(fields),
                None => self.http.get(&url),
            };
            if url.starts_with(&self.issuer) && !self.cookies.is_empty() {
                let cookie = self
                    .cookies
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                request = request.header("cookie", cookie);
            }
            let reply = request
                .send()
                .await
                .with_context(|| format!("requesting {url}"))?;
            for set in reply.headers().get_all("set-cookie") {
                let Some((pair, _)) = set
                    .to_str()
                    .unwrap_or_default()
                    .split_once(';')
                    .or(Some((set.to_str().unwrap_or_default(), "")))
                else {
                    continue;
                };
                if let Some((name, value)) = pair.split_once('=') {
                    if value.is_empty() {
                        self.cookies.remove(name.trim());
                    } else {
                        self.cookies
                            .insert(name.trim().to_owned(), value.trim().to_owned());
                    }
                }
            }
            let status = reply.status().as_u16();
            let location = reply
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let body = reply.text().await.unwrap_or_default();
            form = None;
            if let Some(location) = location.filter(|_| (300..400).contains(&status)) {
                url = if location.starts_with('/') {
                    format!("{}{location}", self.issuer)
                } else {
                    location
                };
                continue;
            }
            if url.starts_with(&format!("{}/interaction/", self.issuer))
                && body.contains("name=\"login\"")
            {
                form = Some(vec![("login".to_owned(), self.login.clone())]);
                continue;
            }
            return Ok(Page { url, status, body });
        }
        bail!("too many redirects, last at {url}")
    }
}

/// The value of the hidden input `name` in a page.
fn hidden(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!("name=\"{name}\""))?;
    let rest = &body[at..];
    let value = rest.split("value=\"").nth(1)?;
    Some(value.split('"').next()?.to_owned())
}
