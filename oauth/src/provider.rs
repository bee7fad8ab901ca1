//! A relay's OAuth2 provider as a client: refresh, revocation, and the shared parts of the
//! two logins. The HTTP client follows no redirects (the token endpoint must answer itself)
//! and gives up on a provider that does not answer within 30 seconds.

use std::time::Duration;

use linkrelay_config::{LoginFlow, OAuth2};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, ClientId, ClientSecret, DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use tracing::debug;

use crate::command::first_line;
use crate::{OAuthError, Token, Tokens};

/// The oauth2 crate's client with the endpoints a config can give.
pub(crate) type Client =
    BasicClient<EndpointMaybeSet, EndpointMaybeSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// How long one request to the provider may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One relay's provider, ready for requests.
#[derive(Debug)]
pub struct Provider {
    pub(crate) relay: String,
    pub(crate) client_id: String,
    client_secret: Option<Token>,
    revocation_url: Option<String>,
    pub(crate) client: Client,
    pub(crate) scopes: Vec<Scope>,
    pub(crate) http: reqwest::Client,
    pub(crate) redirect_host: &'static str,
    /// Parameters a provider wants in its login URL beside the standard ones.
    pub(crate) extra_authorize_params: &'static [(&'static str, &'static str)],
    login: LoginFlow,
}

fn url_error(key: &str, value: &str, e: impl std::fmt::Display) -> OAuthError {
    OAuthError::Settings(format!("`{key}` \"{value}\" is not a URL: {e}"))
}

impl Provider {
    /// The provider of relay `relay` as `settings` describe it; runs the
    /// `client_secret_command` if there is one.
    pub async fn new(relay: &str, settings: &OAuth2) -> Result<Provider, OAuthError> {
        let token_url = TokenUrl::new(settings.token_url.clone())
            .map_err(|e| url_error("token_url", &settings.token_url, e))?;
        let auth_url = settings
            .authorization_url
            .as_ref()
            .map(|u| AuthUrl::new(u.clone()).map_err(|e| url_error("authorization_url", u, e)))
            .transpose()?;
        let device_url = settings
            .device_url
            .as_ref()
            .map(|u| {
                DeviceAuthorizationUrl::new(u.clone()).map_err(|e| url_error("device_url", u, e))
            })
            .transpose()?;
        let mut client = BasicClient::new(ClientId::new(settings.client_id.clone()))
            .set_auth_uri_option(auth_url)
            .set_device_authorization_url_option(device_url)
            .set_token_uri(token_url);
        let client_secret = match &settings.client_secret_command {
            Some(command) => Some(Token::new(first_line(command).await?)),
            None => None,
        };
        if let Some(secret) = &client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.secret().to_owned()));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            // No getaddrinfo (NSS), which the static CLI could not load.
            .hickory_dns(true)
            .build()
            .map_err(|e| OAuthError::Settings(format!("cannot make an HTTP client: {e}")))?;
        Ok(Provider {
            relay: relay.to_owned(),
            client_id: settings.client_id.clone(),
            client_secret,
            revocation_url: settings.revocation_url.clone(),
            client,
            scopes: settings.scopes.iter().cloned().map(Scope::new).collect(),
            http,
            redirect_host: settings.redirect_host,
            // Google gives a refresh token only to an offline login, and only with consent.
            extra_authorize_params: match settings.provider {
                Some(linkrelay_config::Provider::Google) => {
                    &[("access_type", "offline"), ("prompt", "consent")]
                }
                _ => &[],
            },
            login: settings.login,
        })
    }

    /// The login `linkrelay login` uses when not told which.
    pub fn default_login(&self) -> LoginFlow {
        self.login
    }

    /// Trades `refresh` for a new access token (and perhaps a new refresh token, which must
    /// then replace the old one). A refused refresh token is [`OAuthError::NeedsLogin`].
    pub async fn refresh(&self, refresh: &Token) -> Result<Tokens, OAuthError> {
        debug!(relay = %self.relay, "refreshing the access token");
        let token = RefreshToken::new(refresh.secret().to_owned());
        let response = self
            .client
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await
            .map_err(|e| self.request_error(e, Exchange::Refresh))?;
        Ok(tokens(&response))
    }

    /// Revokes `refresh` at the provider (RFC 7009), if it has a revocation endpoint;
    /// whether it had one. The request is made here rather than by the oauth2 crate, which
    /// refuses an `http` endpoint even on this machine (the config allows only those).
    pub async fn revoke(&self, refresh: &Token) -> Result<bool, OAuthError> {
        let Some(url) = &self.revocation_url else {
            return Ok(false);
        };
        let mut request = self.http.post(url).form(&[
            ("token", refresh.secret()),
            ("token_type_hint", "refresh_token"),
            ("client_id", self.client_id.as_str()),
        ]);
        if let Some(secret) = &self.client_secret {
            request = request.basic_auth(&self.client_id, Some(secret.secret()));
        }
        let reply = request
            .send()
            .await
            .map_err(|e| OAuthError::Unreachable(chain(&e)))?;
        let status = reply.status();
        if status.is_success() {
            return Ok(true);
        }
        let body = reply.text().await.unwrap_or_default();
        let code = body
            .split("\"error\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .unwrap_or("no error code");
        Err(self.server_error(code, Some(&format!("HTTP {status}")), Exchange::Revoke))
    }

    /// What a failed request means to the user.
    pub(crate) fn request_error<RE, T>(
        &self,
        e: RequestTokenError<RE, T>,
        exchange: Exchange,
    ) -> OAuthError
    where
        RE: std::error::Error + 'static,
        T: oauth2::ErrorResponse + ServerError,
    {
        match e {
            RequestTokenError::ServerResponse(r) => {
                let (code, description) = r.code_and_description();
                self.server_error(&code, description.as_deref(), exchange)
            }
            RequestTokenError::Request(e) => OAuthError::Unreachable(chain(&e)),
            RequestTokenError::Parse(e, _body) => {
                OAuthError::Unreachable(format!("its answer is not an OAuth2 token response ({e})"))
            }
            RequestTokenError::Other(s) => OAuthError::Unreachable(s),
        }
    }

    /// An error the provider answered with (RFC 6749 section 5.2, RFC 8628 section 3.5).
    fn server_error(
        &self,
        code: &str,
        description: Option<&str>,
        exchange: Exchange,
    ) -> OAuthError {
        let relay = &self.relay;
        let said = match description {
            Some(d) if !d.is_empty() => format!("{code}: {d}"),
            _ => code.to_owned(),
        };
        match (code, exchange) {
            ("invalid_grant", Exchange::Refresh) => OAuthError::NeedsLogin(format!(
                "the provider refused the refresh token of relay {relay} ({said})"
            )),
            ("invalid_client" | "unauthorized_client", _) => OAuthError::Refused(format!(
                "{said}; check client_id \"{}\" (and client_secret_command) against your app registration with the provider (docs/oauth2.md)",
                self.client_id
            )),
            ("access_denied", _) => {
                OAuthError::Abandoned(format!("the login was refused ({said})"))
            }
            ("expired_token", _) => OAuthError::Abandoned(format!(
                "the code was not entered in time ({said}): run `linkrelay login {relay}` again"
            )),
            _ => OAuthError::Refused(said),
        }
    }
}

/// Which exchange a request was: a refused grant means something else in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exchange {
    Refresh,
    Login,
    Revoke,
}

/// An error response's code and description, whatever its type of code.
pub(crate) trait ServerError {
    fn code_and_description(&self) -> (String, Option<String>);
}

impl<T: oauth2::ErrorResponseType + AsRef<str>> ServerError for oauth2::StandardErrorResponse<T> {
    fn code_and_description(&self) -> (String, Option<String>) {
        (
            self.error().as_ref().to_owned(),
            self.error_description().cloned(),
        )
    }
}

/// The tokens of a token response.
pub(crate) fn tokens(response: &oauth2::basic::BasicTokenResponse) -> Tokens {
    Tokens {
        access: Token::new(response.access_token().secret().clone()),
        expires_in: response.expires_in(),
        refresh: response
            .refresh_token()
            .map(|t| Token::new(t.secret().clone())),
    }
}

/// An error and its sources, joined: "error sending request ...: connection refused".
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
