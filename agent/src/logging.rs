//! The log filter: `RUST_LOG` as the user set it (default `info`), except where a library
//! would log secrets. lettre logs every line it writes at debug level, AUTH included (the
//! password in base64), so its connection module is capped at `info` whatever `RUST_LOG`
//! says: secrets never reach the logs, even at `RUST_LOG=trace`.

use tracing_subscriber::EnvFilter;

/// lettre's module that logs the SMTP lines it writes.
const LETTRE_CONNECTION: &str = "lettre::transport::smtp::client";

/// `RUST_LOG` (default `info`) with the secret-bearing targets capped.
pub fn env_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format!("{LETTRE_CONNECTION}=info").parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    }
}
