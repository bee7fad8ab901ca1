//! The config parser on any text: it never panics, and every problem it reports points at a
//! real place in the file (line and column within the text).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use linkrelay_config::{Config, ConfigError, Secret};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            // A valid config has at least one user and names its relays uniquely.
            assert!(!config.users.is_empty());
            for r in &config.relays {
                assert!(r.port > 0);
                // A password source without a username cannot be represented; the username
                // that comes with one is not empty. OAuth2 tokens go with a bearer mechanism
                // only (the type allows a password mechanism; the parser must not).
                assert!(r.auth.as_ref().is_none_or(|a| !a.username.is_empty()));
                assert!(r.auth.as_ref().is_none_or(|a| {
                    !matches!(a.secret, Secret::OAuth2(_)) || a.mechanism.is_bearer()
                }));
            }
        }
        Err(ConfigError::Invalid(diags)) => {
            assert!(!diags.0.is_empty(), "an error without a diagnostic");
            let lines = text.split('\n').count();
            for d in &diags.0 {
                assert!(d.line >= 1 && d.line <= lines, "line {} of {lines}", d.line);
                assert!(d.col >= 1);
                assert!(!d.message.is_empty());
            }
        }
        Err(other) => panic!("parse gave a non-diagnostic error: {other}"),
    }
});
