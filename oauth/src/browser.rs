//! The authorization code grant with PKCE and a loopback redirect (RFC 8252, RFC 7636): the
//! user logs in in this machine's browser, which the provider then sends to a port we listen
//! on at 127.0.0.1 with the code; the code and the PKCE verifier buy the tokens.

use std::borrow::Cow;
use std::time::Duration;

use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::provider::{Exchange, tokens};
use crate::{OAuthError, Provider, Tokens};

/// The most of a request from the browser that is read.
const MAX_REQUEST: usize = 8192;

/// A browser login under way: the URL to open, and the port the browser comes back to.
#[derive(Debug)]
pub struct BrowserLogin {
    listener: TcpListener,
    url: String,
    redirect: RedirectUrl,
    state: CsrfToken,
    verifier: PkceCodeVerifier,
}

impl BrowserLogin {
    /// The provider's login page, for the browser.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the browser will be sent back to (`http://127.0.0.1:PORT/`).
    pub fn redirect_uri(&self) -> &str {
        self.redirect.as_str()
    }
}

/// What came back to the loopback port.
#[derive(Debug, PartialEq, Eq)]
enum Callback {
    Code(String),
    Error(String),
    /// Something else (a favicon, a stale tab, a wrong state): answered and ignored.
    Ignored(&'static str),
}

impl Provider {
    /// Listens on a loopback port and makes the login URL (with a PKCE challenge and a
    /// random state) that sends the browser back to it.
    pub async fn start_browser_login(&self) -> Result<BrowserLogin, OAuthError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| OAuthError::Settings(format!("cannot listen on 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| OAuthError::Settings(format!("cannot listen on 127.0.0.1: {e}")))?
            .port();
        let redirect = RedirectUrl::new(format!("http://{}:{port}/", self.redirect_host))
            .map_err(|e| OAuthError::Settings(format!("bad redirect URL: {e}")))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = self
            .client
            .authorize_url(CsrfToken::new_random)
            .map_err(|_| {
                OAuthError::Settings(format!(
                    "relay {} has no `authorization_url`: log in with --device",
                    self.relay
                ))
            })?
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Borrowed(&redirect));
        for (name, value) in self.extra_authorize_params {
            request = request.add_extra_param(*name, *value);
        }
        let (url, state) = request.url();
        Ok(BrowserLogin {
            listener,
            url: url.to_string(),
            redirect,
            state,
            verifier,
        })
    }

    /// Waits (at most `limit`) for the browser to come back with a code, then trades it for
    /// the tokens.
    pub async fn finish_browser_login(
        &self,
        login: BrowserLogin,
        limit: Duration,
    ) -> Result<Tokens, OAuthError> {
        let code = tokio::time::timeout(limit, wait_for_code(&login))
            .await
            .map_err(|_| {
                OAuthError::Abandoned(format!(
                    "the browser did not come back within {} minutes: run `linkrelay login {}` again",
                    limit.as_secs() / 60,
                    self.relay
                ))
            })??;
        let response = self
            .client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(login.verifier)
            .set_redirect_uri(Cow::Borrowed(&login.redirect))
            .request_async(&self.http)
            .await
            .map_err(|e| self.request_error(e, Exchange::Login))?;
        Ok(tokens(&response))
    }
}

/// Answers the browser's requests until one carries the code (or an error) with our state.
async fn wait_for_code(login: &BrowserLogin) -> Result<String, OAuthError> {
    loop {
        let (mut stream, peer) = login
            .listener
            .accept()
            .await
            .map_err(|e| OAuthError::Abandoned(format!("the loopback port failed: {e}")))?;
        let callback = match read_request(&mut stream).await {
            Some(target) => callback(&target, login.state.secret()),
            None => Callback::Ignored("not an HTTP request"),
        };
        debug!(%peer, ?callback, "a request on the loopback port");
        let (status, page) = match &callback {
            Callback::Code(_) => (
                "200 OK",
                "linkrelay is logged in. You can close this window.",
            ),
            Callback::Error(_) => (
                "200 OK",
                "The login did not happen. You can close this window.",
            ),
            Callback::Ignored(why) => ("400 Bad Request", *why),
        };
        let body = format!("<!DOCTYPE html><title>linkrelay</title><p>{page}</p>\n");
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
        match callback {
            Callback::Code(code) => return Ok(code),
            Callback::Error(said) => {
                return Err(OAuthError::Abandoned(format!(
                    "the provider sent the browser back without a code ({said})"
                )));
            }
            Callback::Ignored(_) => {}
        }
    }
}

/// The request target of an HTTP request (`/?code=...&state=...`), read within bounds.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    let mut words = text.lines().next()?.split(' ');
    match (words.next(), words.next()) {
        (Some("GET"), Some(target)) => Some(target.to_owned()),
        _ => None,
    }
}

/// What a request target means, given the state we sent.
fn callback(target: &str, state: &str) -> Callback {
    let Some(query) = target.strip_prefix("/?") else {
        return Callback::Ignored("not the login's answer");
    };
    let mut code = None;
    let mut error = None;
    let mut description = None;
    let mut got_state = None;
    for (k, v) in oauth2::url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "code" => code = Some(v.into_owned()),
            "state" => got_state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = Some(v.into_owned()),
            _ => {}
        }
    }
    if got_state.as_deref() != Some(state) {
        return Callback::Ignored("not the login's answer (its state is not ours)");
    }
    match (code, error) {
        (_, Some(error)) => Callback::Error(match description {
            Some(d) => format!("{error}: {d}"),
            None => error,
        }),
        (Some(code), None) => Callback::Code(code),
        (None, None) => Callback::Ignored("no code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_state_brings_a_code_or_an_error() {
        assert_eq!(
            callback("/?code=abc%2Fd&state=s1", "s1"),
            Callback::Code("abc/d".into())
        );
        assert_eq!(
            callback(
                "/?state=s1&error=access_denied&error_description=no+way",
                "s1"
            ),
            Callback::Error("access_denied: no way".into())
        );
        assert!(matches!(
            callback("/?code=abc&state=other", "s1"),
            Callback::Ignored(_)
        ));
        assert!(matches!(
            callback("/favicon.ico", "s1"),
            Callback::Ignored(_)
        ));
        assert!(matches!(callback("/?state=s1", "s1"), Callback::Ignored(_)));
    }
}
