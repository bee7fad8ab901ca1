//! Whether a config file is safe to trust, judged by its owner and mode.
//!
//! The config decides which commands run (`password_command`) and where mail goes, so a file
//! that another user can write is refused outright (as OpenSSH refuses such a
//! `~/.ssh/config`). A `password_command` may hold the password itself (`echo ...`), so a
//! file that has one must not be readable by others either (as msmtp refuses a readable file
//! with a password in it).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::diag::{Diagnostic, Diagnostics, line_col};
use crate::{Config, Secret};

/// Checks the owner and mode of the config file at `path`, whose contents are `text` and
/// which parsed as `config`.
pub(crate) fn check(path: &Path, text: &str, config: &Config) -> Result<(), Diagnostics> {
    // A file that vanished since it was read: nothing to judge (the read itself succeeded).
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let euid = rustix::process::geteuid().as_raw();
    let problems = problems(meta.uid(), meta.mode(), euid, text, config);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Diagnostics(
        problems
            .into_iter()
            .map(|(at, message, help)| {
                let (line, col) = line_col(text, at);
                Diagnostic {
                    path: path.to_path_buf(),
                    line,
                    col,
                    message,
                    help: Some(help.replace("{path}", &shell_word(&path.display().to_string()))),
                }
            })
            .collect(),
    ))
}

/// What is wrong with a file of owner `uid` and `mode`, read by `euid`: (byte offset,
/// message, help with `{path}` for the file).
fn problems(
    uid: u32,
    mode: u32,
    euid: u32,
    text: &str,
    config: &Config,
) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    if uid != euid && uid != 0 {
        out.push((
            0,
            format!("the config file is owned by uid {uid}, not by you (uid {euid}) or root: another user decides what runs and where your mail goes"),
            format!("make it yours: cp {{path}} {{path}}.new && mv {{path}}.new {{path}} (or chown {euid} {{path}})"),
        ));
    }
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "anyone"
        } else {
            "its group"
        };
        out.push((
            0,
            format!(
                "the config file can be written by {who} (mode {:04o}): another user could make it run any command as you (password_command) or send your mail elsewhere",
                mode & 0o7777
            ),
            "chmod go-w {path}".to_owned(),
        ));
    }
    let command = config
        .relays
        .iter()
        .filter_map(|r| match &r.auth.as_ref()?.secret {
            Secret::Command(_) => Some("password_command"),
            Secret::OAuth2(o) if o.client_secret_command.is_some() => Some("client_secret_command"),
            _ => None,
        })
        .min_by_key(|key| key_offset(text, key));
    if let Some(key) = command
        && mode & 0o044 != 0
    {
        let who = if mode & 0o004 != 0 {
            "anyone"
        } else {
            "its group"
        };
        out.push((
            key_offset(text, key),
            format!(
                "the config file has a `{key}` and can be read by {who} (mode {:04o}): a secret written in the command would be readable too",
                mode & 0o7777
            ),
            "chmod 600 {path} (or use password_secret = { ... } to keep the password in the desktop keyring)".to_owned(),
        ));
    }
    out
}

/// The byte offset of the first line that assigns `key` (bare), else 0.
fn key_offset(text: &str, key: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return offset + (line.len() - trimmed.len());
        }
        offset += line.len();
    }
    0
}

/// `word` quoted for a shell if it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_COMMAND: &str = "[[relay]]\nname = \"r\"\nhost = \"h\"\ntls = \"starttls\"\nusername = \"u\"\n  password_command = \"pass show r\"\n[[user]]\nname = \"u\"\n";
    const WITHOUT: &str = "[[user]]\nname = \"u\"\n";

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("c.toml")).expect("valid")
    }

    #[test]
    fn private_and_readable_files_without_a_command_are_fine() {
        let c = config(WITH_COMMAND);
        assert!(problems(1000, 0o100600, 1000, WITH_COMMAND, &c).is_empty());
        assert!(problems(0, 0o100400, 1000, WITH_COMMAND, &c).is_empty());
        let c = config(WITHOUT);
        assert!(problems(1000, 0o100644, 1000, WITHOUT, &c).is_empty());
    }

    #[test]
    fn a_readable_file_with_a_password_command_is_refused_at_the_command() {
        let c = config(WITH_COMMAND);
        for mode in [0o100644, 0o100640, 0o100604] {
            let p = problems(1000, mode, 1000, WITH_COMMAND, &c);
            assert_eq!(p.len(), 1, "{mode:o}: {p:?}");
            assert_eq!(line_col(WITH_COMMAND, p[0].0), (6, 3));
            assert!(p[0].1.contains("password_command"), "{}", p[0].1);
            assert!(p[0].2.starts_with("chmod 600 {path}"), "{}", p[0].2);
        }
    }

    #[test]
    fn a_readable_file_with_a_client_secret_command_is_refused_at_that_command() {
        let text = "[[relay]]\nname = \"r\"\nhost = \"h\"\ntls = \"tls\"\nusername = \"u\"\nauth = \"xoauth2\"\n[relay.oauth2]\nprovider = \"google\"\nclient_id = \"id\"\nclient_secret_command = \"pass show g\"\n[[user]]\nname = \"u\"\n";
        let c = config(text);
        let p = problems(1000, 0o100644, 1000, text, &c);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(line_col(text, p[0].0), (10, 1));
        assert!(p[0].1.contains("`client_secret_command`"), "{}", p[0].1);
        assert!(problems(1000, 0o100600, 1000, text, &c).is_empty());
    }

    #[test]
    fn writable_by_others_or_owned_by_another_user_is_refused() {
        let c = config(WITHOUT);
        let p = problems(1000, 0o100666, 1000, WITHOUT, &c);
        assert_eq!(p.len(), 1);
        assert!(p[0].1.contains("written by anyone"), "{}", p[0].1);
        let p = problems(1000, 0o100620, 1000, WITHOUT, &c);
        assert!(p[0].1.contains("written by its group"), "{}", p[0].1);
        let p = problems(1001, 0o100600, 1000, WITHOUT, &c);
        assert_eq!(p.len(), 1);
        assert!(p[0].1.contains("owned by uid 1001"), "{}", p[0].1);
    }

    #[test]
    fn the_real_file_is_judged_and_the_help_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("my config.toml");
        std::fs::write(&path, WITH_COMMAND).expect("write");
        let set = |mode| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        set(0o644);
        let err = Config::load(&path).expect_err("readable with a command");
        let text = err.to_string();
        assert!(text.contains("my config.toml:6:3: error:"), "{text}");
        assert!(text.contains("help: chmod 600 '"), "{text}");
        set(0o600);
        Config::load(&path).expect("private is fine");
    }

    #[test]
    fn key_offset_finds_assignments_only() {
        let text = "# password_command = x\npassword_commands = 1\n password_command= \"y\"\n";
        assert_eq!(line_col(text, key_offset(text, "password_command")), (3, 2));
        assert_eq!(key_offset("nothing", "password_command"), 0);
    }
}
