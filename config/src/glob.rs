//! Shell-style globs as used in `match = {...}` and `from = [...]`.
//!
//! Syntax: `*` any run of characters (also empty), `?` one character, `[abc]` / `[a-z]` one
//! character of a set, `[!abc]` / `[^abc]` one character not in the set, `\x` the character `x`
//! itself. Everything else matches itself. A pattern matches the whole text, not a part of it.
//!
//! A small matcher of our own instead of a regex-backed one: patterns are matched straight from
//! their text, so the public config types stay plain data (`String`s) that other crates can build
//! and compare, and a bad pattern is reported at the character that is wrong.

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A character that must be there.
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`
    AnyRun,
    /// `[...]`
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Why a pattern is not a valid glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GlobError {
    /// Byte offset in the pattern of the character at fault.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: String,
}

/// Parses `pattern`, or says where it is wrong.
fn parse(pattern: &str) -> Result<Vec<Token>, GlobError> {
    let mut tokens = Vec::new();
    let mut chars = pattern.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match c {
            '*' => {
                if tokens.last() != Some(&Token::AnyRun) {
                    tokens.push(Token::AnyRun);
                }
            }
            '?' => tokens.push(Token::AnyChar),
            '\\' => match chars.next() {
                Some((_, escaped)) => tokens.push(Token::Literal(escaped)),
                None => return Err(trailing_backslash(offset)),
            },
            '[' => {
                let mut negated = false;
                if let Some(&(_, '!' | '^')) = chars.peek() {
                    negated = true;
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some((lo_offset, lo)) = chars.next() else {
                        return Err(GlobError {
                            offset,
                            message: "unclosed `[` in pattern".to_owned(),
                            help: "close the set with `]`, or write `\\\\[` (a backslash \
                                   before `[`) to match a `[` itself"
                                .to_owned(),
                        });
                    };
                    if lo == ']' && !first {
                        break;
                    }
                    first = false;
                    let lo = if lo == '\\' {
                        match chars.next() {
                            Some((_, escaped)) => escaped,
                            None => return Err(trailing_backslash(lo_offset)),
                        }
                    } else {
                        lo
                    };
                    let mut hi = lo;
                    if let Some(&(_, '-')) = chars.peek() {
                        let mut ahead = chars.clone();
                        ahead.next();
                        match ahead.peek() {
                            Some(&(_, ']')) | None => {} // a `-` at the end is itself
                            Some(_) => {
                                chars.next();
                                hi = match chars.next() {
                                    Some((hi_offset, '\\')) => match chars.next() {
                                        Some((_, escaped)) => escaped,
                                        None => return Err(trailing_backslash(hi_offset)),
                                    },
                                    Some((_, hi)) => hi,
                                    None => lo, // not reached: `ahead` saw a character
                                };
                                if hi < lo {
                                    return Err(GlobError {
                                        offset: lo_offset,
                                        message: format!("range `{lo}-{hi}` is backwards"),
                                        help: format!("write the lower end first: `{hi}-{lo}`"),
                                    });
                                }
                            }
                        }
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    Ok(tokens)
}

fn trailing_backslash(offset: usize) -> GlobError {
    GlobError {
        offset,
        message: "pattern ends with a lone backslash".to_owned(),
        help: "remove it, or double it to match a backslash itself".to_owned(),
    }
}

/// Checks that `pattern` is a valid glob.
pub(crate) fn check(pattern: &str) -> Result<(), GlobError> {
    parse(pattern).map(|_| ())
}

/// Whether `pattern` matches all of `text`. An invalid pattern matches nothing.
pub(crate) fn matches(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let Ok(tokens) = parse(pattern) else {
        return false;
    };
    let text: Vec<char> = text.chars().collect();
    let (mut ti, mut pi) = (0, 0);
    // After a `*`: the token after it, and the text position it was last tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < text.len() {
        if let Some(token) = tokens.get(pi) {
            if *token == Token::AnyRun {
                backtrack = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            if token_matches(token, text[ti], case_insensitive) {
                pi += 1;
                ti += 1;
                continue;
            }
        }
        match backtrack {
            Some((after_star, tried)) => {
                pi = after_star;
                ti = tried + 1;
                backtrack = Some((after_star, tried + 1));
            }
            None => return false,
        }
    }
    tokens[pi..].iter().all(|t| *t == Token::AnyRun)
}

fn token_matches(token: &Token, c: char, case_insensitive: bool) -> bool {
    match token {
        Token::AnyRun | Token::AnyChar => true,
        Token::Literal(l) => *l == c || (case_insensitive && l.to_lowercase().eq(c.to_lowercase())),
        Token::Class { negated, ranges } => {
            let within = |c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            let found = within(c)
                || (case_insensitive
                    && (c.to_lowercase().any(within) || c.to_uppercase().any(within)));
            found != *negated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_wildcards() {
        assert!(matches("ISP-A", "ISP-A", false));
        assert!(!matches("ISP-A", "ISP-AB", false));
        assert!(!matches("ISP-A", "isp-a", false));
        assert!(matches("ISP-A", "isp-a", true));
        assert!(matches("*", "", false));
        assert!(matches("*", "anything at all", false));
        assert!(matches("eth*", "eth0", false));
        assert!(!matches("eth*", "wlan0", false));
        assert!(matches("*@bob.example", "Bob@BOB.example", true));
        assert!(!matches("*@bob.example", "bob@bob.example.org", true));
        assert!(matches("a*b*c", "axxbyyc", false));
        assert!(matches("a*b*c", "abcbc", false));
        assert!(!matches("a*b*c", "abcb", false));
        assert!(matches("wl?0", "wlp0", false));
        assert!(!matches("wl?0", "wl0", false));
        assert!(matches("**x", "x", false));
    }

    #[test]
    fn sets_and_escapes() {
        assert!(matches("eth[0-9]", "eth7", false));
        assert!(!matches("eth[0-9]", "ethx", false));
        assert!(matches("eth[!0-9]", "ethx", false));
        assert!(matches("eth[^0-9]", "ethx", false));
        assert!(matches("[]]", "]", false));
        assert!(matches("[a-]", "-", false));
        assert!(matches("[A-Z]x", "qx", true));
        assert!(!matches("[A-Z]x", "qx", false));
        assert!(matches("\\*", "*", false));
        assert!(!matches("\\*", "a", false));
        assert!(matches("[\\]]", "]", false));
    }

    #[test]
    fn errors_point_at_the_fault() {
        let err = check("ab[cd").expect_err("invalid");
        assert_eq!(err.offset, 2);
        assert!(err.message.contains("unclosed"));
        let err = check("a[z-a]").expect_err("invalid");
        assert_eq!(err.offset, 2);
        assert!(err.help.contains("a-z"));
        let err = check("ab\\").expect_err("invalid");
        assert_eq!(err.offset, 2);
        assert!(check("[]").is_err());
        assert!(!matches("ab[cd", "ab[cd", false));
    }
}
