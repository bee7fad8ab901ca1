//! `client_secret_command`: run with `sh -c`; its first line is the client secret.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::OAuthError;

/// How long the command may take (a pinentry the user answers included).
const LIMIT: Duration = Duration::from_secs(60);
/// The most it may print before its first line end.
const MAX_LINE: usize = 4096;

/// The first line `command` prints. Its output is never put in an error.
pub(crate) async fn first_line(command: &str) -> Result<String, OAuthError> {
    let fail = |why: String| OAuthError::Settings(format!("client_secret_command {why}"));
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run: {e}")))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("has no output".into()))?;
    let run = async {
        let mut out = Vec::new();
        (&mut stdout)
            .take(MAX_LINE as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| fail(format!("cannot be read: {e}")))?;
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("cannot be waited for: {e}")))?;
        Ok::<_, OAuthError>((out, status))
    };
    let (out, status) = tokio::time::timeout(LIMIT, run)
        .await
        .map_err(|_| fail(format!("did not finish within {}s", LIMIT.as_secs())))??;
    if !status.success() {
        return Err(fail(format!("exited with {status}")));
    }
    let line = out.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.len() > MAX_LINE {
        return Err(fail(format!("printed a line longer than {MAX_LINE} bytes")));
    }
    let line = String::from_utf8(line.to_vec())
        .map_err(|_| fail("printed something that is not UTF-8 text".into()))?;
    let line = line.trim_end_matches('\r').to_owned();
    if line.is_empty() {
        return Err(fail("printed nothing".into()));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_line_is_the_secret_and_failures_never_show_the_output() {
        assert_eq!(
            first_line("printf 's3cret\\nmore'").await.unwrap(),
            "s3cret"
        );
        let e = first_line("echo leaked; exit 3")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "client_secret_command exited with exit status: 3");
        let e = first_line("true").await.unwrap_err().to_string();
        assert_eq!(e, "client_secret_command printed nothing");
    }
}
