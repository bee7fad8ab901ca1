//! The linkrelay test harness: real parts to run the agent and its CLI against.
//!
//! - [`bus`]: private `dbus-daemon`s ([`TestBus`]), a session bus and a "system" bus per test;
//! - [`nm`]: [`FakeNm`], an NM-shaped service on such a system bus that behaves like
//!   NetworkManager 1.42 (object paths, PropertiesChanged, StateChanged, name owner changes);
//! - [`smtp`]: [`ScriptedRelay`], an SMTP relay with a fault at any stage and a record of what
//!   it accepted, including Postfix's "Relay access denied" for clients on foreign networks,
//!   with STARTTLS or implicit TLS;
//! - [`tls`]: [`TestCa`], a certificate authority made at test time, and server certificates
//!   it signs;
//! - [`netns`]: [`NetNs`], a network namespace per test with veth links (root only), where
//!   the agent follows the kernel's default route, and [`netns::pair::NetnsPair`], two of them
//!   joined by a veth pair, for a relay that is not on loopback;
//! - [`maildomain`]: [`maildomain::DomainServers`], dnsmasq and an HTTPS server in a
//!   namespace, answering what `linkrelay setup` asks (autoconfig, ISP database, SRV, MX);
//! - [`notifications`]: [`notifications::FakeNotifications`], a desktop notification server
//!   that records what the user would have read;
//! - [`keyring`]: [`keyring::Keyring`], a real gnome-keyring-daemon serving the Secret Service
//!   on a test bus;
//! - [`oidc`]: [`oidc::OidcProvider`], a real OAuth2 authorization server (oidc-provider on
//!   node), and [`oidc::Browser`], the user's browser at it; with [`postfix`]'s loopback
//!   submission whose Dovecot checks bearer tokens by introspection, the OAuth2 tests' parts;
//! - [`config`]: the agent's config file, built in code ([`config::Config`]);
//! - [`world`]: one test's whole world: both buses, a home, the real `linkrelayd` and
//!   `linkrelay` binaries.
//! - [`twoisp`]: for the interoperability suite (root only): two ISPs in network namespaces,
//!   with the real NetworkManager ([`realnm`]) and real Postfix relays ([`postfix`]);
//! - [`run`]: running a program, or saying which command line failed, how and why.
//!
//! Nothing here touches the machine's own buses or network configuration (network changes
//! happen only inside the namespaces [`netns`] makes).

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod config;
pub mod keyring;
pub mod maildomain;
pub mod netns;
pub mod nm;
pub mod notifications;
pub mod oidc;
pub mod postfix;
pub mod realnm;
pub mod run;
pub mod smtp;
pub mod tls;
pub mod twoisp;
pub mod world;

#[cfg(test)]
mod nm_tests;

pub use bus::{BusKind, BusOptions, TestBus};
pub use netns::NetNs;
pub use nm::{ActiveSpec, FakeNm};
pub use smtp::{ClientLine, Fault, Received, RelayScript, RelayTls, ScriptedRelay};
pub use tls::TestCa;
