//! Errors: [`ConfigError`], and the [`Diagnostic`]s that say where a config file is wrong.

use std::fmt;
use std::path::PathBuf;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config: every problem found, in file order.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl ConfigError {
    /// The problems found, when the file was read but is not valid.
    pub fn diagnostics(&self) -> Option<&Diagnostics> {
        match self {
            ConfigError::Invalid(d) => Some(d),
            ConfigError::Io { .. } => None,
        }
    }
}

/// All problems found in one config file, sorted by position.
///
/// Displayed as every [`Diagnostic`], one after the other (one or two lines each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// One problem in a config file, at a position, with what to write instead.
///
/// Displayed as `{path}:{line}:{col}: error: {message}`, followed, if there is help, by a
/// second line `  help: {help}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (for [`Config::parse`](crate::Config::parse), the origin it was given).
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters (not bytes).
    pub col: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A remark about a valid config file, at a position: something that is allowed but
/// probably not what was meant (e.g. a rule on a field the link source cannot see).
///
/// Displayed as `{path}:{line}:{col}: note: {message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    /// What to know.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: note: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
///
/// An offset past the end is taken as the end; one inside a character as that character.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    // A byte order mark is not a column anyone sees.
    let line_text = before[line_start..].trim_start_matches('\u{feff}');
    let col = line_text.chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters
        assert_eq!(line_col(text, 12), (2, 6));
        // inside the two-byte 'é': its own column
        assert_eq!(line_col(text, 8), (2, 2));
        assert_eq!(line_col(text, 1000), (3, 1));
        assert_eq!(line_col("\u{feff}ab", 4), (1, 2));
    }

    #[test]
    fn display() {
        let d = Diagnostic {
            path: PathBuf::from("/x/config.toml"),
            line: 3,
            col: 7,
            message: "bad".into(),
            help: Some("write good".into()),
        };
        assert_eq!(
            d.to_string(),
            "/x/config.toml:3:7: error: bad\n  help: write good"
        );
        let d2 = Diagnostic {
            help: None,
            ..d.clone()
        };
        assert_eq!(
            Diagnostics(vec![d, d2]).to_string(),
            "/x/config.toml:3:7: error: bad\n  help: write good\n/x/config.toml:3:7: error: bad"
        );
    }
}
