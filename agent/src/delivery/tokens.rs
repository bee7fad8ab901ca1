//! OAuth2 access tokens of the relays that want them, kept in memory and shared by every
//! user's flusher and by test-relay (the agent is one process; the tokens are the relays').
//!
//! The refresh token `linkrelay login` stored (keyring or token file) is read at each new
//! session: it is the truth, so a `login` or `logout` needs no word to the agent. An access
//! token in memory is used while it came from that same refresh token and has more than a
//! tenth of its life (at most a minute) left; otherwise it is refreshed, and a new refresh
//! token the provider gives (rotation) replaces the stored one. Each relay has its own lock:
//! a refresh holds up only the flushes that need that relay's token. A refused refresh token
//! is [`OAuthError::NeedsLogin`]: the mail waits for `linkrelay login`, it never fails.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use linkrelay_config::{OAuth2, Relay, RelayName};
use linkrelay_oauth::{OAuthError, Provider, Token, TokenStore};
use tracing::{debug, warn};

/// An access token and how long it lives.
struct Access {
    token: Token,
    obtained: Instant,
    lifetime: Duration,
}

/// One relay's tokens.
#[derive(Default)]
struct Slot {
    /// The settings the tokens came from: changed settings (a reload) start afresh.
    settings: Option<OAuth2>,
    /// The refresh token the access token came from.
    refresh: Option<Token>,
    access: Option<Access>,
    /// Whether the user was told that this relay needs a login, since its last good refresh.
    told_login: bool,
}

type Slots = Mutex<HashMap<RelayName, Arc<tokio::sync::Mutex<Slot>>>>;

static SLOTS: LazyLock<Slots> = LazyLock::new(Slots::default);

/// When a provider does not say how long its access tokens last.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Whether an access token obtained `age` ago that lives `lifetime` is too close to its end
/// to be used: less than a tenth of its life, or a minute, is left.
pub(crate) fn needs_refresh(age: Duration, lifetime: Duration) -> bool {
    let margin = (lifetime / 10).min(Duration::from_secs(60));
    age + margin >= lifetime
}

/// `relay needs login (linkrelay login relay): why`.
pub(crate) fn needs_login(relay: &RelayName, why: &str) -> OAuthError {
    OAuthError::NeedsLogin(format!(
        "{relay} needs login (linkrelay login {relay}): {why}"
    ))
}

/// An access token for `relay`, whose OAuth2 settings are `settings`. With `renew` the one in
/// memory is not used (the relay refused it).
pub(crate) async fn access_token(
    relay: &Relay,
    settings: &OAuth2,
    renew: bool,
) -> Result<Token, OAuthError> {
    let slot = {
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(relay.name.clone()).or_default().clone()
    };
    let mut slot = slot.lock().await;
    if slot.settings.as_ref() != Some(settings) {
        *slot = Slot {
            settings: Some(settings.clone()),
            ..Slot::default()
        };
    }
    let store = TokenStore::for_relay(relay)
        .ok_or_else(|| OAuthError::Settings(format!("relay {} has no OAuth2", relay.name)))?;
    let Some(refresh) = store.load().await.map_err(|e| match e {
        OAuthError::Store(why) => OAuthError::Store(format!("{why} (relay {})", relay.name)),
        other => other,
    })?
    else {
        return Err(needs_login(
            &relay.name,
            &format!("no refresh token in {}", store.describe()),
        ));
    };
    if !renew
        && slot.refresh.as_ref() == Some(&refresh)
        && let Some(a) = &slot.access
        && !needs_refresh(a.obtained.elapsed(), a.lifetime)
    {
        return Ok(a.token.clone());
    }
    let provider = Provider::new(&relay.name, settings).await?;
    let obtained = Instant::now();
    let tokens = provider.refresh(&refresh).await.map_err(|e| match e {
        OAuthError::NeedsLogin(why) => needs_login(&relay.name, &why),
        other => other,
    })?;
    debug!(relay = %relay.name, lifetime = ?tokens.expires_in, "access token refreshed");
    let mut current = refresh;
    if let Some(rotated) = tokens.refresh.filter(|r| *r != current) {
        // The provider rotates its refresh tokens: the old one is spent.
        if let Err(e) = store.save(&rotated).await {
            warn!(relay = %relay.name, error = %e, "cannot keep the new refresh token");
        }
        current = rotated;
    }
    slot.refresh = Some(current);
    slot.told_login = false;
    slot.access = Some(Access {
        token: tokens.access.clone(),
        obtained,
        lifetime: tokens.expires_in.unwrap_or(DEFAULT_LIFETIME),
    });
    Ok(tokens.access)
}

/// Whether the user should now be told that `relay` needs a login: once, until a refresh
/// works again.
pub(crate) async fn first_login_notice(relay: &RelayName) -> bool {
    let slot = {
        let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(relay.clone()).or_default().clone()
    };
    let mut slot = slot.lock().await;
    !std::mem::replace(&mut slot.told_login, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_refreshed_in_the_last_tenth_of_its_life_or_its_last_minute() {
        let hour = Duration::from_secs(3600);
        assert!(!needs_refresh(Duration::from_secs(3539), hour));
        assert!(needs_refresh(Duration::from_secs(3540), hour));
        let short = Duration::from_secs(10);
        assert!(!needs_refresh(Duration::from_secs(8), short));
        assert!(needs_refresh(Duration::from_secs(9), short));
        assert!(needs_refresh(Duration::from_secs(11), short));
    }

    #[test]
    fn needs_login_names_the_command() {
        let e = needs_login(&RelayName::from("relay-x"), "invalid_grant");
        assert!(e.needs_login());
        assert_eq!(
            e.to_string(),
            "relay-x needs login (linkrelay login relay-x): invalid_grant"
        );
    }
}
