//! Why each user's mail waits beyond its route, for `status` (the `Waits` property): the
//! refusals the relay memory holds for the user's relays on this link, the OAuth2 relays
//! that wait for `linkrelay login`, the last error of a delivery attempt and the next retry.
//!
//! The event loop feeds it the flushers' events ([`Waits::record`]) and asks it for the
//! D-Bus form when it publishes ([`Waits::info`]); both are pure.

use std::collections::{BTreeMap, BTreeSet};

use linkrelay_config::{RelayName, UserName};
use linkrelay_dbus::agent::{RefusalInfo, UserWait};

use crate::delivery::flusher::{FlushEvent, UserRoute};
use crate::delivery::memory::RelayMemory;
use crate::router::Route;

/// What the flushers said lately that `status` shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Waits {
    /// User -> the last error of an attempt (the deferred message's reason) and when.
    last_error: BTreeMap<UserName, (String, u64)>,
    /// OAuth2 relays whose refresh token is missing or refused, until mail goes out
    /// through them again.
    needs_login: BTreeSet<RelayName>,
}

impl Waits {
    /// Takes in what a flusher said at unix second `t`. A message sent, or a queue emptied,
    /// clears the user's last error; a message sent through a relay that needed a login
    /// shows that it does not any more.
    pub fn record(&mut self, ev: &FlushEvent, t: u64) {
        match ev {
            FlushEvent::Deferred { user, reason, .. } => {
                self.last_error.insert(user.clone(), (reason.clone(), t));
            }
            FlushEvent::Sent { user, relay, .. } => {
                self.last_error.remove(user);
                self.needs_login.retain(|r| r.as_str() != relay.as_str());
            }
            FlushEvent::NeedsLogin { relay, .. } => {
                self.needs_login.insert(relay.clone());
            }
            FlushEvent::Finished { user, counts, .. } if counts.queued == 0 => {
                self.last_error.remove(user);
            }
            _ => {}
        }
    }

    /// Forgets what is known of users no longer in the config.
    pub fn retain_users(&mut self, users: &[UserName]) {
        self.last_error.retain(|u, _| users.contains(u));
    }

    /// Why `user`'s mail waits, at unix second `t`: on a route that sends, the refusals
    /// remembered for its relays on its link, its relays that need a login, and `next_due`
    /// (when the flusher comes back for deferred mail) as the next retry. A held route
    /// has neither refusals nor a retry: the hold says why.
    pub fn info(
        &self,
        user: &UserName,
        route: &UserRoute,
        memory: &RelayMemory,
        next_due: Option<u64>,
        t: u64,
    ) -> UserWait {
        let (last_error, last_error_at) = self.last_error.get(user).cloned().unwrap_or_default();
        let mut wait = UserWait {
            user: user.to_string(),
            refusals: Vec::new(),
            needs_login: Vec::new(),
            last_error,
            last_error_at,
            next_retry: 0,
        };
        if let Route::Send { relays, .. } = &route.route {
            wait.refusals = relays
                .iter()
                .filter_map(|r| {
                    memory.refusal(&route.link, r, t).map(|f| RefusalInfo {
                        relay: r.to_string(),
                        link: route.link.to_string(),
                        reply: f.reply.clone(),
                        until: f.until,
                    })
                })
                .collect();
            wait.needs_login = relays
                .iter()
                .filter(|r| self.needs_login.contains(*r))
                .map(|r| r.to_string())
                .collect();
            wait.next_retry = next_due.unwrap_or(0);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use linkrelay_outbox::Counts;

    use super::*;
    use crate::delivery::flusher::BatchResult;
    use crate::delivery::memory::LinkKey;

    fn sending(relays: &[&str]) -> UserRoute {
        UserRoute {
            link: LinkKey::Rule("isp-a".into()),
            route: Route::Send {
                relays: relays.iter().map(|r| RelayName::from(*r)).collect(),
                max_size: None,
            },
        }
    }

    fn deferred(user: &str, reason: &str) -> FlushEvent {
        FlushEvent::Deferred {
            user: user.into(),
            id: "1.2.3.abcd".into(),
            reason: reason.into(),
            next_attempt: 2000,
        }
    }

    fn finished(user: &str, queued: usize) -> FlushEvent {
        FlushEvent::Finished {
            user: user.into(),
            result: BatchResult::default(),
            counts: Counts {
                queued,
                failed: 0,
                sent: 0,
            },
            next_due: None,
        }
    }

    #[test]
    fn a_refusal_of_a_routed_relay_is_shown_with_its_reply_and_end() {
        let mut memory = RelayMemory::default();
        let link = LinkKey::Rule("isp-a".into());
        memory.refused(&link, &"relay-b".into(), 5000, "554 5.7.1 relaying denied");
        memory.refused(&link, &"elsewhere".into(), 5000, "554 not routed");
        let w = Waits::default().info(
            &"alice".into(),
            &sending(&["relay-a", "relay-b"]),
            &memory,
            Some(1500),
            1000,
        );
        assert_eq!(
            w.refusals,
            vec![RefusalInfo {
                relay: "relay-b".into(),
                link: "isp-a".into(),
                reply: "554 5.7.1 relaying denied".into(),
                until: 5000,
            }]
        );
        assert_eq!(w.next_retry, 1500);
        let later =
            Waits::default().info(&"alice".into(), &sending(&["relay-b"]), &memory, None, 5000);
        assert!(later.refusals.is_empty(), "an ended refusal is not shown");
    }

    #[test]
    fn a_held_route_shows_no_retry_time() {
        let held = UserRoute {
            link: LinkKey::NoLink,
            route: Route::Hold {
                reason: "no link".into(),
            },
        };
        let w = Waits::default().info(
            &"alice".into(),
            &held,
            &RelayMemory::default(),
            Some(99_999),
            1000,
        );
        assert_eq!(w.next_retry, 0);
    }

    #[test]
    fn the_last_error_stays_until_mail_goes_out_or_the_queue_is_empty() {
        let mut waits = Waits::default();
        let route = sending(&["relay-a"]);
        let memory = RelayMemory::default();
        let error = |w: &Waits| {
            let i = w.info(&"alice".into(), &route, &memory, None, 0);
            (i.last_error, i.last_error_at)
        };
        waits.record(&deferred("alice", "relay-a: cannot connect"), 1000);
        assert_eq!(error(&waits), ("relay-a: cannot connect".into(), 1000));
        waits.record(&finished("alice", 1), 1001);
        assert_eq!(error(&waits).0, "relay-a: cannot connect");
        waits.record(&finished("alice", 0), 1002);
        assert_eq!(error(&waits), (String::new(), 0));
        waits.record(&deferred("alice", "relay-a: TLS"), 1003);
        waits.record(
            &FlushEvent::Sent {
                user: "alice".into(),
                id: "x".into(),
                relay: "relay-a".into(),
                reply: "250 ok".into(),
            },
            1004,
        );
        assert_eq!(error(&waits).0, "");
    }

    #[test]
    fn a_relay_needs_a_login_until_mail_goes_out_through_it() {
        let mut waits = Waits::default();
        let route = sending(&["relay-x", "relay-a"]);
        let memory = RelayMemory::default();
        let login = |w: &Waits| w.info(&"bob".into(), &route, &memory, None, 0).needs_login;
        waits.record(
            &FlushEvent::NeedsLogin {
                relay: "relay-x".into(),
                reason: "no refresh token".into(),
            },
            1,
        );
        assert_eq!(login(&waits), vec!["relay-x".to_string()]);
        let sent = |relay: &str| FlushEvent::Sent {
            user: "bob".into(),
            id: "x".into(),
            relay: relay.into(),
            reply: "250 ok".into(),
        };
        waits.record(&sent("relay-a"), 2);
        assert_eq!(login(&waits), vec!["relay-x".to_string()]);
        waits.record(&sent("relay-x"), 3);
        assert!(login(&waits).is_empty());
    }
}
