//! May a password go over a connection without TLS? Only to this machine (every address the
//! relay's host resolved to is a loopback address), or when the user said so with the loudly
//! named `dangerous_plaintext_auth = true`. Pure, so it is tested on its own.

use std::net::{IpAddr, SocketAddr};

use linkrelay_config::Relay;

/// Why a plaintext AUTH is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainAuth {
    /// The relay is on this machine: nothing crosses a network.
    Loopback,
    /// The user set `dangerous_plaintext_auth = true`: log it loudly.
    Dangerous,
}

/// Whether `ip` is a loopback address, an IPv4-mapped one (`::ffff:127.0.0.1`) included.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Decides whether AUTH may go in clear to `relay`, whose host resolved to `peers`; the
/// error is the text for the queue.
pub fn allow(relay: &Relay, peers: &[SocketAddr]) -> Result<PlainAuth, String> {
    if !peers.is_empty() && peers.iter().all(|p| is_loopback(p.ip())) {
        return Ok(PlainAuth::Loopback);
    }
    if relay.dangerous_plaintext_auth {
        return Ok(PlainAuth::Dangerous);
    }
    let addrs = peers
        .iter()
        .map(|p| p.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "refusing to send the password unencrypted to {} ({addrs}), which is not this machine: use tls = \"starttls\" or \"tls\" (or, if you must, dangerous_plaintext_auth = true)",
        relay.host
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn relay(dangerous: bool) -> Relay {
        let text = format!(
            "[[relay]]\nname = \"r\"\nhost = \"smtp.example.net\"\ntls = \"none\"\nusername = \"u\"\npassword_command = \"x\"\ndangerous_plaintext_auth = {dangerous}\n[[user]]\nname = \"u\"\n"
        );
        let config = linkrelay_config::Config::parse(&text, Path::new("t.toml")).expect("valid");
        config.relays[0].clone()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| SocketAddr::new(a.parse().expect("ip"), 25))
            .collect()
    }

    #[test]
    fn loopback_only_when_every_address_is() {
        let r = relay(false);
        for ok in [
            &["127.0.0.1"][..],
            &["::1"],
            &["127.0.0.2", "::1"],
            &["::ffff:127.0.0.1"],
        ] {
            assert_eq!(allow(&r, &addrs(ok)), Ok(PlainAuth::Loopback), "{ok:?}");
        }
        for bad in [
            &["192.0.2.1"][..],
            &["127.0.0.1", "192.0.2.1"],
            &["::ffff:192.0.2.1"],
            &["0.0.0.0"],
            &[],
        ] {
            let e = allow(&r, &addrs(bad)).expect_err("refused");
            assert!(
                e.contains("refusing to send the password unencrypted"),
                "{e}"
            );
            assert!(e.contains("dangerous_plaintext_auth = true"), "{e}");
        }
    }

    #[test]
    fn the_dangerous_option_allows_it() {
        assert_eq!(
            allow(&relay(true), &addrs(&["192.0.2.1"])),
            Ok(PlainAuth::Dangerous)
        );
    }
}
