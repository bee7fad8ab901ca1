//! `linkrelay setup ADDRESS`: from an address to a working config.
//!
//! 1. find the domain's submission server ([`discover`]), saying where the answer came from;
//! 2. put the password where the config can name it (the keyring, or a `password_command`);
//! 3. have the agent try the relay from the link that is up (`ProbeRelay`: it is on the link,
//!    and it is the one that will use the relay);
//! 4. propose the `[[relay]]`, a `[[link]]` rule for this link when none matches it, and the
//!    user's `from` and route, as a diff of the config; write it (keeping its comments and
//!    order) once confirmed, and have the agent reload it.
//!
//! Nothing is written when any step fails.

pub mod discover;
mod keyring;
mod net;

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use linkrelay_config::{Config, SetupSettings};
use linkrelay_dbus::agent::{AgentProxy, RelayTest};

use crate::edit::{self, Login, RelaySpec, SecretSpec};
use crate::{relay, routes};

pub use linkrelay_config::autoconfig::{Server, Tls, valid_host};

/// `linkrelay setup`'s options.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Your email address, e.g. alice@isp-a.example
    pub address: String,
    /// Write the change without asking (for scripts)
    #[arg(long)]
    pub yes: bool,
    /// Use a server that nothing vouches for (found by guessing, over plain HTTP, or by an SRV
    /// record pointing outside the domain) without asking
    #[arg(long)]
    pub accept_unverified: bool,
    /// The [[user]] that sends as ADDRESS [default: the user whose `from` lists it, else a new
    /// one named after its local part]
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The SMTP login [default: what the provider's settings say, else none]
    #[arg(long, value_name = "LOGIN")]
    pub username: Option<String>,
    /// Take the password from this command's output (written as password_command) instead of
    /// the keyring
    #[arg(long, value_name = "COMMAND", requires = "username")]
    pub password_command: Option<String>,
    /// The ISP database's base URL [default: [setup] ispdb, else Thunderbird's]
    #[arg(long, value_name = "URL")]
    pub ispdb: Option<String>,
    /// The DNS server to ask (IP[:PORT]) [default: [setup] nameserver, else /etc/resolv.conf]
    #[arg(long, value_name = "ADDR")]
    pub nameserver: Option<String>,
    /// The config file [default: the agent's, else $XDG_CONFIG_HOME/linkrelay/config.toml]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Runs `linkrelay setup` against the running agent.
pub async fn run(agent: &AgentProxy<'_>, args: SetupArgs) -> anyhow::Result<ExitCode> {
    let (local, domain) = split_address(&args.address)?;
    let path = crate::config_file(agent, args.config.clone()).await?;
    let text = edit::read_or_empty(&path)?;
    let config = if text.trim().is_empty() {
        None
    } else {
        Some(Config::parse(&text, &path).map_err(|e| {
            anyhow!("{e}\nfix the config first (`linkrelay config check`), then run setup again")
        })?)
    };
    let settings = config.as_ref().map(|c| c.setup.clone()).unwrap_or_default();
    let nameserver = match &args.nameserver {
        Some(n) => Some(
            SetupSettings::parse_nameserver(n)
                .ok_or_else(|| anyhow!("--nameserver {n:?} is not an IP address"))?,
        ),
        None => settings.nameserver,
    };
    let ispdb = args
        .ispdb
        .clone()
        .or(settings.ispdb)
        .unwrap_or_else(|| discover::DEFAULT_ISPDB.to_string());

    println!("Looking for the submission server of {domain}...");
    let net = net::Net::new(nameserver)?;
    let mut log = Vec::new();
    let found = discover::discover(&net, &args.address, &domain, &ispdb, &mut log).await;
    for line in &log {
        println!("  {line}");
    }
    let found = found?;
    let s = &found.server;
    println!(
        "Found {}:{} ({}) from {}{}",
        s.host,
        s.port,
        s.tls.as_str(),
        found.origin,
        if found.verified { "" } else { " [UNVERIFIED]" }
    );
    if !found.verified && !args.accept_unverified {
        let question = format!(
            "Nothing vouches for {}: it came from {}. Use it?",
            s.host, found.origin
        );
        if !confirm(&question, false)? {
            bail!(
                "not using an unverified server; check it, then run again with --accept-unverified"
            );
        }
    }

    let spec = relay_spec(&args, &found.server, &domain, config.as_ref());
    if let Some(login) = &spec.login
        && let SecretSpec::Keyring(attributes) = &login.secret
    {
        ensure_password(attributes, &spec).await?;
    }

    println!("Asking linkrelayd to try it from this link (nothing is sent)...");
    let test = agent
        .probe_relay(&spec.toml(), &args.address, "")
        .await
        .map_err(crate::dbus_error)?;
    print!("{}", relay::render(&test));
    let link = agent.link().await.map_err(crate::dbus_error)?;
    let proposal = propose(
        &text,
        &path,
        &args,
        local,
        &spec,
        &test,
        &link,
        config.as_ref(),
    )?;
    let diff = edit::diff(&text, &proposal.text, &path);
    if diff.is_empty() {
        println!("{} already has all of this.", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!("\n{diff}");
    for note in &proposal.notes {
        println!("{note}");
    }
    if !args.yes && !confirm(&format!("Write this to {}?", path.display()), true)? {
        println!("Nothing was written.");
        return Ok(ExitCode::FAILURE);
    }
    edit::write_checked(&path, &proposal.text)?;
    println!("wrote {}", path.display());
    let code = crate::reload_after_write(agent).await?;
    println!(
        "On each other link you use: `linkrelay routes probe`, then `linkrelay routes suggest --apply`."
    );
    Ok(code)
}

/// The local part and the domain of `address`, checked.
fn split_address(address: &str) -> anyhow::Result<(&str, String)> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        bail!("{address:?} is not an email address");
    };
    if local.is_empty() || local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{address:?} is not an email address");
    }
    if !valid_host(domain) || domain.parse::<std::net::IpAddr>().is_ok() || !domain.contains('.') {
        bail!("{domain:?} is not a mail domain");
    }
    Ok((local, domain.to_ascii_lowercase()))
}

/// The relay to propose: an existing one of the same host and port keeps its name and
/// settings; else a new one named after the domain, with the login given or the provider's.
fn relay_spec(
    args: &SetupArgs,
    server: &Server,
    domain: &str,
    config: Option<&Config>,
) -> RelaySpec {
    let relays = config.map(|c| c.relays.as_slice()).unwrap_or(&[]);
    let taken: Vec<String> = relays.iter().map(|r| r.name.to_string()).collect();
    let same = relays
        .iter()
        .find(|r| r.host.eq_ignore_ascii_case(&server.host) && r.port == server.port);
    let name = match same {
        Some(r) => r.name.to_string(),
        None => edit::fresh_name(domain, "relay", &taken),
    };
    let username = args.username.clone().or_else(|| server.username.clone());
    let login = username.map(|username| Login {
        secret: match &args.password_command {
            Some(cmd) => SecretSpec::Command(cmd.clone()),
            None => SecretSpec::Keyring(vec![
                ("service".into(), "smtp".into()),
                ("host".into(), server.host.clone()),
                ("username".into(), username.clone()),
            ]),
        },
        username,
    });
    RelaySpec {
        name,
        host: server.host.clone(),
        port: server.port,
        tls: server.tls.as_str().into(),
        login,
    }
}

/// Makes sure the keyring has the relay's password, asking for it when it has not.
async fn ensure_password(attributes: &[(String, String)], spec: &RelaySpec) -> anyhow::Result<()> {
    let conn = zbus::Connection::session()
        .await
        .context("cannot reach the session bus for the keyring")?;
    if keyring::has(&conn, attributes).await? {
        println!("The keyring has a password for {}.", spec.host);
        return Ok(());
    }
    let login = spec
        .login
        .as_ref()
        .map(|l| l.username.as_str())
        .unwrap_or("");
    let password = keyring::read_password(&format!("Password of {login} at {}: ", spec.host))?;
    keyring::store(
        &conn,
        attributes,
        &format!("linkrelay: {} ({login})", spec.name),
        &password,
    )
    .await?;
    let words: Vec<String> = attributes.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "Stored the password in the keyring (`secret-tool lookup {}` shows it; the config names only where it is).",
        words.join(" ")
    );
    Ok(())
}

/// The changed config text, and what to tell the user about it.
struct Proposal {
    text: String,
    notes: Vec<String>,
}

/// The edits: the relay (when new), a rule for this link (when none matches and the relay
/// takes our mail here), the user sending as `address`, and its route on this link.
#[allow(clippy::too_many_arguments)]
fn propose(
    text: &str,
    path: &std::path::Path,
    args: &SetupArgs,
    local: &str,
    spec: &RelaySpec,
    test: &RelayTest,
    link: &std::collections::HashMap<String, String>,
    config: Option<&Config>,
) -> anyhow::Result<Proposal> {
    let mut doc = edit::document(text, path)?;
    let mut notes = Vec::new();
    // The link first: in a new file the rules then come before the relays and users, as
    // people write them.
    let rule = match (test.may_relay.as_str(), link.is_empty()) {
        ("yes", false) => Some(link_rule(&mut doc, link, &spec.name)?),
        ("yes", true) => {
            notes.push(
                "No link is up, so no route is proposed: on each link, `linkrelay routes probe` then `linkrelay routes suggest --apply`.".into(),
            );
            None
        }
        ("no", _) => {
            notes.push(format!(
                "{} refuses to relay for us on this link ({}); it is written down, without a route here. On the link it belongs to, `linkrelay routes probe` then `linkrelay routes suggest --apply`.",
                spec.name, test.verdict
            ));
            None
        }
        _ => bail!(
            "the relay did not answer the test ({}); nothing was written. Check the settings above, or try again on another link",
            test.verdict
        ),
    };
    if config.is_none_or(|c| c.relay(&spec.name).is_none()) {
        edit::add_relay(
            &mut doc,
            spec,
            &format!("found by `linkrelay setup {}`", args.address),
        )?;
    }
    let user = args
        .user
        .clone()
        .or_else(|| {
            config.and_then(|c| {
                c.users
                    .iter()
                    .find(|u| u.from.iter().any(|f| f.eq_ignore_ascii_case(&args.address)))
                    .map(|u| u.name.to_string())
            })
        })
        .unwrap_or_else(|| {
            let taken: Vec<String> = config
                .map(|c| c.users.iter().map(|u| u.name.to_string()).collect())
                .unwrap_or_default();
            edit::fresh_name(local, "me", &taken)
        });
    edit::ensure_user(&mut doc, &user, &args.address)?;
    if let Some(rule) = rule {
        edit::add_route(&mut doc, &user, &rule, std::slice::from_ref(&spec.name))?;
    }
    Ok(Proposal {
        text: doc.to_string(),
        notes,
    })
}

/// The `[[link]]` rule of the link that is up: the one that matches it, else a new one
/// (added to `doc`) by its NetworkManager id, DHCP domain or interface.
fn link_rule(
    doc: &mut toml_edit::DocumentMut,
    link: &std::collections::HashMap<String, String>,
    relay: &str,
) -> anyhow::Result<String> {
    if let Some(rule) = link.get("name").filter(|n| !n.is_empty()) {
        return Ok(rule.clone());
    }
    let facts: BTreeMap<String, String> = link
        .iter()
        .filter(|(k, _)| ["id", "uuid", "domains", "interface"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let taken = edit::names(doc, "link");
    let new = routes::rule_for(&facts, &taken)
        .ok_or_else(|| anyhow!("the link that is up shows nothing to recognise it by"))?;
    let id = link.get("id").cloned().unwrap_or_default();
    edit::add_link(
        doc,
        &new.name,
        &[(new.field, new.value.as_str())],
        &format!("the link {id}, where {relay} takes our mail (`linkrelay setup`)"),
    )?;
    Ok(new.name)
}

/// Asks a yes/no question on the terminal; `None` of a terminal means no.
fn confirm(question: &str, default_yes: bool) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        println!("{question} (not asked: standard input is not a terminal; pass --yes)");
        return Ok(false);
    }
    print!("{question} [{}] ", if default_yes { "Y/n" } else { "y/N" });
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(match line.trim().to_ascii_lowercase().as_str() {
        "" => default_yes,
        a => a == "y" || a == "yes",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_splits_into_its_local_part_and_a_real_domain() {
        assert_eq!(
            split_address("Alice@ISP-A.example").unwrap(),
            ("Alice", "isp-a.example".to_string())
        );
        for bad in [
            "alice",
            "@isp-a.example",
            "alice@localhost",
            "alice@192.0.2.1",
            "a b@x.example",
            "a@x_y.example",
        ] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }
}
