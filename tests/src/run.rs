//! Running a program for the harness: it succeeds, or the error says which command line it
//! was, how it exited and what it printed.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

/// Runs `cmd` (stdin empty, output captured) and returns its output; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", command_line(cmd)))?;
    succeeded(cmd, out)
}

/// Runs `cmd` with `input` on its stdin and returns its output; fails unless it exits 0.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{}`", command_line(cmd)))?;
    child
        .stdin
        .take()
        .context("the child's stdin")?
        .write_all(input)
        .with_context(|| format!("writing to `{}`", command_line(cmd)))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{}`", command_line(cmd)))?;
    succeeded(cmd, out)
}

/// Bytes a program printed, as text (invalid UTF-8 replaced).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `out` when the command exited 0, else an error with its command line, status and output.
fn succeeded(cmd: &Command, out: Output) -> anyhow::Result<Output> {
    if out.status.success() {
        return Ok(out);
    }
    let stdout = text(&out.stdout);
    let stdout = stdout.trim();
    bail!(
        "`{}` failed ({}): {}{}{}",
        command_line(cmd),
        out.status,
        text(&out.stderr).trim(),
        if stdout.is_empty() { "" } else { "\nstdout: " },
        stdout
    )
}

/// The program and its arguments, as one would type them.
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
