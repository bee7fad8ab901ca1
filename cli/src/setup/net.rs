//! The network edge of `linkrelay setup`: HTTPS (and plain HTTP) fetches with a size cap and
//! redirects shown rather than followed across domains, DNS lookups of SRV, MX and host
//! addresses, and TCP connects for guesses.
//!
//! Names are resolved by hickory (from `/etc/resolv.conf`, or the nameserver given), for HTTP
//! too: no getaddrinfo, so the statically linked CLI needs no NSS, and a `[setup] nameserver`
//! answers for everything setup looks up. Certificates are checked against the system's roots
//! (rustls-native-certs, which honours `SSL_CERT_FILE`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The largest autoconfig document read: real ones are a few KiB.
pub const MAX_XML: usize = 64 * 1024;
/// Redirects followed within the domain before giving up.
const MAX_REDIRECTS: usize = 3;
/// How long one HTTP request, DNS query or TCP connect may take.
const TIMEOUT: Duration = Duration::from_secs(8);

/// What a fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// The document, and the URL it came from after redirects.
    Body(String, Url),
    /// Nothing there (no such host, refused, 404, a certificate that does not verify, ...):
    /// the next way of looking is tried.
    Nothing(String),
    /// An answer that must not be used: too big, not text, redirected to another domain or
    /// from HTTPS to HTTP. Setup stops and says why.
    Refused(String),
}

/// An SRV record's target, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    /// Priority (lower first).
    pub priority: u16,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// The resolver and the HTTP client setup uses.
pub struct Net {
    dns: TokioResolver,
    http: reqwest::Client,
}

/// Hands reqwest's name lookups to hickory.
struct HickoryNames(TokioResolver);

impl Resolve for HickoryNames {
    fn resolve(&self, name: Name) -> Resolving {
        let dns = self.0.clone();
        Box::pin(async move {
            let ips = dns.lookup_ip(name.as_str()).await?;
            let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl Net {
    /// A resolver asking `nameserver` (else the system's), and an HTTP client that resolves
    /// through it, follows no redirect by itself and trusts the system's roots.
    pub fn new(nameserver: Option<SocketAddr>) -> anyhow::Result<Net> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match nameserver {
            Some(addr) => {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![ns]),
                    provider,
                )
            }
            None => Resolver::builder(provider).context(
                "cannot read the system's DNS settings (/etc/resolv.conf); pass --nameserver",
            )?,
        };
        builder.options_mut().timeout = TIMEOUT;
        builder.options_mut().attempts = 1;
        let dns = builder.build().context("cannot set up the DNS resolver")?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .dns_resolver(Arc::new(HickoryNames(dns.clone())))
            .user_agent(concat!("linkrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Net { dns, http })
    }

    /// GETs `url`, following redirects that stay inside `scope` (a domain: it and its
    /// subdomains) and on HTTPS when it started there; the body at most [`MAX_XML`] bytes.
    pub async fn fetch(&self, url: Url, scope: &str) -> Fetched {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let resp = match self.http.get(url.clone()).send().await {
                Ok(r) => r,
                Err(e) => return Fetched::Nothing(describe(&e)),
            };
            let status = resp.status();
            if status.is_redirection() {
                let next = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok());
                let Some(next) = next else {
                    return Fetched::Refused(format!(
                        "{url} answers {status} without a usable Location"
                    ));
                };
                if let Some(why) = redirect_problem(&url, &next, scope) {
                    return Fetched::Refused(why);
                }
                url = next;
                continue;
            }
            if !status.is_success() {
                return Fetched::Nothing(format!("HTTP {status}"));
            }
            return match read_capped(resp, MAX_XML).await {
                Ok(body) => Fetched::Body(body, url),
                Err(why) => Fetched::Refused(format!("{url}: {why}")),
            };
        }
        Fetched::Refused(format!("{url}: more than {MAX_REDIRECTS} redirects"))
    }

    /// The checked targets of SRV record `name`, lowest priority first. No record (or the
    /// "no service" target ".") is an empty list; a record with a bad target or port is an
    /// error, since it is what the domain says.
    pub async fn srv(&self, name: &str) -> anyhow::Result<Vec<SrvTarget>> {
        let lookup = match self.dns.srv_lookup(name).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Err(e) => bail!("looking up {name}: {e}"),
        };
        let mut out = Vec::new();
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            let host = srv
                .target
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if host.is_empty() {
                continue;
            }
            out.push(check_srv(name, srv.priority, &host, srv.port)?);
        }
        out.sort_by_key(|t| t.priority);
        Ok(out)
    }

    /// The mail exchangers of `domain`, most preferred first, checked as host names.
    pub async fn mx(&self, domain: &str) -> anyhow::Result<Vec<String>> {
        let lookup = match self.dns.mx_lookup(domain).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
            Err(e) => bail!("looking up MX {domain}: {e}"),
        };
        let mut mx: Vec<(u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((
                    mx.preference,
                    mx.exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase(),
                )),
                _ => None,
            })
            .collect();
        mx.sort();
        for (_, host) in &mx {
            if !super::valid_host(host) {
                bail!("the MX record of {domain} names {host:?}, which is not a host name");
            }
        }
        Ok(mx.into_iter().map(|(_, h)| h).collect())
    }

    /// Whether `host:port` takes a TCP connection.
    pub async fn answers(&self, host: &str, port: u16) -> bool {
        let Ok(ips) = self.dns.lookup_ip(host).await else {
            return false;
        };
        for ip in ips.iter() {
            let connect = tokio::net::TcpStream::connect(SocketAddr::new(ip, port));
            if let Ok(Ok(_)) = tokio::time::timeout(TIMEOUT, connect).await {
                return true;
            }
        }
        false
    }
}

/// Why following a redirect from `from` to `to` is not done, if it is not: another domain
/// than `scope`, or from HTTPS down to HTTP.
pub fn redirect_problem(from: &Url, to: &Url, scope: &str) -> Option<String> {
    let host = to.host_str().unwrap_or("");
    if !in_domain(host, scope) {
        return Some(format!(
            "{from} redirects to {to}, outside {scope}: not followed. If you trust {host}, \
             look at that page and write the relay yourself"
        ));
    }
    if from.scheme() == "https" && to.scheme() != "https" {
        return Some(format!(
            "{from} redirects to {to}: from HTTPS down to plain HTTP, not followed"
        ));
    }
    None
}

/// Whether `host` is `domain` or under it.
pub fn in_domain(host: &str, domain: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    host == domain || host.ends_with(&format!(".{domain}"))
}

/// An SRV answer checked: a real port, a host name for a target.
pub fn check_srv(name: &str, priority: u16, host: &str, port: u16) -> anyhow::Result<SrvTarget> {
    if !super::valid_host(host) {
        bail!("the SRV record {name} names {host:?}, which is not a host name");
    }
    if port == 0 {
        bail!("the SRV record {name} gives port 0 for {host}");
    }
    Ok(SrvTarget {
        priority,
        host: host.to_string(),
        port,
    })
}

/// Reads at most `cap` bytes of body as UTF-8 text.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<String, String> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(format!("the answer is larger than {} KiB", cap / 1024));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(format!("the answer is larger than {} KiB", cap / 1024));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(describe(&e)),
        }
    }
    String::from_utf8(body).map_err(|_| "the answer is not UTF-8 text".to_string())
}

/// A reqwest error in a few words: its innermost cause ("no such host" for a name without an
/// address), since the outer layers only repeat the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    let cause = inner.to_string();
    if cause.contains("no records found") || cause.contains("NXDomain") {
        "no such host".into()
    } else if e.is_timeout() {
        "no answer in time".into()
    } else if e.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn redirects_stay_inside_the_domain_and_on_https() {
        let from = url("https://autoconfig.isp-a.example/mail/config-v1.1.xml");
        assert_eq!(
            redirect_problem(&from, &url("https://isp-a.example/x.xml"), "isp-a.example"),
            None
        );
        let away = redirect_problem(&from, &url("https://evil.example/x.xml"), "isp-a.example");
        assert!(away.is_some_and(|w| w.contains("outside isp-a.example")));
        let lookalike = redirect_problem(
            &from,
            &url("https://notisp-a.example/x.xml"),
            "isp-a.example",
        );
        assert!(lookalike.is_some());
        let down = redirect_problem(&from, &url("http://isp-a.example/x.xml"), "isp-a.example");
        assert!(down.is_some_and(|w| w.contains("plain HTTP")));
    }

    #[test]
    fn srv_answers_are_checked() {
        assert_eq!(
            check_srv(
                "_submission._tcp.isp-a.example",
                0,
                "smtp.isp-a.example",
                587
            )
            .unwrap(),
            SrvTarget {
                priority: 0,
                host: "smtp.isp-a.example".into(),
                port: 587
            }
        );
        assert!(check_srv("_submission._tcp.x", 0, "smtp.x.example", 0).is_err());
        assert!(check_srv("_submission._tcp.x", 0, "bad host!", 587).is_err());
    }
}
