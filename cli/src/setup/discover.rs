//! Finding the submission server of a mail domain, in the order mail clients look, each answer
//! saying where it came from and whether anything vouches for it:
//!
//! 1. `https://autoconfig.<domain>/mail/config-v1.1.xml?emailaddress=<address>`;
//! 2. `https://<domain>/.well-known/autoconfig/mail/config-v1.1.xml`;
//! 3. the ISP database: `<ispdb>/<domain>`;
//! 4. RFC 6186 SRV records: `_submissions._tcp.<domain>` (TLS), `_submission._tcp.<domain>`
//!    (STARTTLS);
//! 5. the ISP database's entry of the domain of the MX host;
//! 6. `http://autoconfig.<domain>/...` (plain HTTP: anyone on the way could have written it);
//! 7. guesses: `smtp.<domain>` and `mail.<domain>` that take a connection on 587, then 465.
//!
//! HTTPS answers with a verified certificate are vouched for, and so are SRV targets inside
//! the domain; plain HTTP, SRV targets elsewhere and guesses must be confirmed. A place with
//! nothing there passes to the next; an answer that is there but wrong (malformed or huge XML,
//! only plaintext servers, a redirect to another domain) stops the search with its error.

use anyhow::{anyhow, bail};
use reqwest::Url;

use super::net::{Fetched, Net, in_domain};
use super::{Server, Tls};

/// Thunderbird's ISP database.
pub const DEFAULT_ISPDB: &str = "https://autoconfig.thunderbird.net/v1.1/";

/// A server found, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The first server of the answer.
    pub server: Server,
    /// Where it came from, in words ("autoconfig at https://...").
    pub origin: String,
    /// Whether a verified certificate (or the domain's own SRV record) vouches for it.
    pub verified: bool,
}

/// Looks for `address`'s submission server; `log` gets one line per place looked at.
pub async fn discover(
    net: &Net,
    address: &str,
    domain: &str,
    ispdb: &str,
    log: &mut Vec<String>,
) -> anyhow::Result<Found> {
    let https_autoconfig = Url::parse_with_params(
        &format!("https://autoconfig.{domain}/mail/config-v1.1.xml"),
        &[("emailaddress", address)],
    )?;
    let well_known = Url::parse(&format!(
        "https://{domain}/.well-known/autoconfig/mail/config-v1.1.xml"
    ))?;
    for (what, url) in [
        ("autoconfig", https_autoconfig),
        ("well-known autoconfig", well_known),
    ] {
        if let Some(found) = from_xml(net, what, url, domain, address, log).await? {
            return Ok(found);
        }
    }
    if let Some(found) = from_ispdb(net, ispdb, domain, address, log).await? {
        return Ok(found);
    }
    if let Some(found) = from_srv(net, domain, log).await? {
        return Ok(found);
    }
    if let Some(found) = from_mx(net, ispdb, domain, address, log).await? {
        return Ok(found);
    }
    let plain = Url::parse_with_params(
        &format!("http://autoconfig.{domain}/mail/config-v1.1.xml"),
        &[("emailaddress", address)],
    )?;
    if let Some(found) = from_xml(
        net,
        "autoconfig over plain HTTP",
        plain,
        domain,
        address,
        log,
    )
    .await?
    {
        return Ok(found);
    }
    if let Some(found) = guess(net, domain, log).await {
        return Ok(found);
    }
    bail!(
        "found no submission server for {domain}:\n  {}\nName it yourself: `linkrelay config init`, then a [[relay]] in the config",
        log.join("\n  ")
    )
}

/// The first server of the autoconfig document at `url` (`None`: nothing there).
async fn from_xml(
    net: &Net,
    what: &str,
    url: Url,
    scope: &str,
    address: &str,
    log: &mut Vec<String>,
) -> anyhow::Result<Option<Found>> {
    let shown = url.to_string();
    let (body, at) = match net.fetch(url, scope).await {
        Fetched::Body(body, at) => (body, at),
        Fetched::Nothing(why) => {
            log.push(format!("{what} {shown}: {why}"));
            return Ok(None);
        }
        Fetched::Refused(why) => bail!("{what}: {why}; nothing was written"),
    };
    let servers = linkrelay_config::autoconfig::smtp_servers(&body, address)
        .map_err(|e| anyhow!("{what} at {at}: {e}; nothing was written"))?;
    log.push(format!("{what} {at}: found"));
    let verified = at.scheme() == "https";
    Ok(servers.into_iter().next().map(|server| Found {
        server,
        origin: format!("{what} at {at}"),
        verified,
    }))
}

async fn from_ispdb(
    net: &Net,
    ispdb: &str,
    domain: &str,
    address: &str,
    log: &mut Vec<String>,
) -> anyhow::Result<Option<Found>> {
    let base = Url::parse(ispdb).map_err(|e| anyhow!("ISP database URL {ispdb:?}: {e}"))?;
    let base = if base.path().ends_with('/') {
        base
    } else {
        Url::parse(&format!("{base}/"))?
    };
    let scope = base.host_str().unwrap_or_default().to_string();
    let url = base.join(domain)?;
    from_xml(net, "ISP database", url, &scope, address, log).await
}

async fn from_srv(net: &Net, domain: &str, log: &mut Vec<String>) -> anyhow::Result<Option<Found>> {
    let mut best: Option<(u16, Server, String)> = None;
    for (service, tls) in [
        ("_submissions._tcp", Tls::Implicit),
        ("_submission._tcp", Tls::Starttls),
    ] {
        let name = format!("{service}.{domain}");
        let targets = net.srv(&name).await?;
        if targets.is_empty() {
            log.push(format!("SRV {name}: none"));
            continue;
        }
        log.push(format!("SRV {name}: found"));
        let t = &targets[0];
        if best.as_ref().is_none_or(|(p, _, _)| t.priority < *p) {
            let server = Server {
                host: t.host.clone(),
                port: t.port,
                tls,
                username: None,
            };
            best = Some((t.priority, server, name));
        }
    }
    Ok(best.map(|(_, server, name)| {
        let verified = in_domain(&server.host, domain);
        Found {
            origin: if verified {
                format!("SRV record {name}")
            } else {
                format!("SRV record {name}, which points outside {domain}")
            },
            server,
            verified,
        }
    }))
}

/// The domains to look up in the ISP database for an MX host: its parents, nearest first,
/// down to two labels, leaving out the address's own domain (already looked up).
pub fn mx_domains(mx: &str, domain: &str) -> Vec<String> {
    let labels: Vec<&str> = mx.split('.').collect();
    (1..labels.len().saturating_sub(1))
        .map(|i| labels[i..].join("."))
        .filter(|d| !d.eq_ignore_ascii_case(domain))
        .take(2)
        .collect()
}

async fn from_mx(
    net: &Net,
    ispdb: &str,
    domain: &str,
    address: &str,
    log: &mut Vec<String>,
) -> anyhow::Result<Option<Found>> {
    let mx = net.mx(domain).await?;
    let Some(first) = mx.first() else {
        log.push(format!("MX {domain}: none"));
        return Ok(None);
    };
    log.push(format!("MX {domain}: {first}"));
    for d in mx_domains(first, domain) {
        if let Some(mut found) = from_ispdb(net, ispdb, &d, address, log).await? {
            found.origin = format!("{} (for {first}, the MX host of {domain})", found.origin);
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The usual host names, on 587 (STARTTLS) then 465 (TLS).
async fn guess(net: &Net, domain: &str, log: &mut Vec<String>) -> Option<Found> {
    for (port, tls) in [(587, Tls::Starttls), (465, Tls::Implicit)] {
        for prefix in ["smtp", "mail"] {
            let host = format!("{prefix}.{domain}");
            if net.answers(&host, port).await {
                log.push(format!("guess {host}:{port}: answers"));
                return Some(Found {
                    server: Server {
                        host,
                        port,
                        tls,
                        username: None,
                    },
                    origin: "a guess (the host took a connection)".into(),
                    verified: false,
                });
            }
            log.push(format!("guess {host}:{port}: no answer"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mx_host_leads_to_its_parent_domains_but_not_the_address_domain() {
        assert_eq!(
            mx_domains("mx1.mail.provider.example", "isp-a.example"),
            ["mail.provider.example", "provider.example"]
        );
        assert!(mx_domains("mx.isp-a.example", "isp-a.example").is_empty());
        assert!(mx_domains("localhost", "x.example").is_empty());
    }
}
