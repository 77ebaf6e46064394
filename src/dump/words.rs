//! Splitting one `iptables-save` / `iptables-restore` line into words, the way iptables-restore
//! does it, and the inverse: quoting a value the way iptables-save prints it.
//!
//! iptables-restore treats a double-quoted string as one word; inside quotes a backslash escapes the
//! next character (iptables-save escapes `"`, `\` and `'`). Outside quotes a backslash is literal.
//! A closing quote ends the word.

use thiserror::Error;

/// One word of a line, with the byte offset where it starts in that line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word with quotes removed and escapes resolved.
    pub text: String,
    /// Whether any part of the word was quoted (a quoted word is never an option).
    pub quoted: bool,
    /// Byte offset of the first character (or opening quote) in the line.
    pub start: usize,
}

impl Word {
    /// True for an unquoted word that looks like an option (`-x`, `--xyz`).
    pub fn is_option(&self) -> bool {
        !self.quoted && self.text.len() > 1 && self.text.starts_with('-')
    }

    /// True for an unquoted `!`.
    pub fn is_bang(&self) -> bool {
        !self.quoted && self.text == "!"
    }
}

/// Errors of the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// A `"` was opened and never closed. Not retryable: the line itself is malformed.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
}

/// Splits a line into words.
pub fn split(line: &str) -> Result<Vec<Word>, TokenError> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut in_quote = false;
    let mut escaped = false;
    for (idx, c) in line.char_indices() {
        if in_quote {
            if escaped {
                push_char(&mut current, idx, c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quote = false;
                // As in iptables-restore, a closing quote ends the word (even an empty one).
                let word = current.take().unwrap_or(Word {
                    text: String::new(),
                    quoted: true,
                    start: idx,
                });
                words.push(word);
            } else {
                push_char(&mut current, idx, c);
            }
        } else if c == '"' {
            in_quote = true;
            let word = current.get_or_insert_with(|| Word {
                text: String::new(),
                quoted: true,
                start: idx,
            });
            word.quoted = true;
        } else if c.is_whitespace() {
            if let Some(word) = current.take() {
                words.push(word);
            }
        } else {
            push_char(&mut current, idx, c);
        }
    }
    if in_quote {
        return Err(TokenError::UnterminatedQuote);
    }
    if let Some(word) = current.take() {
        words.push(word);
    }
    Ok(words)
}

fn push_char(current: &mut Option<Word>, idx: usize, c: char) {
    current
        .get_or_insert_with(|| Word {
            text: String::new(),
            quoted: false,
            start: idx,
        })
        .text
        .push(c);
}

/// Quotes a value as iptables-save does (`xtables_save_string`): bare when it is a non-empty run
/// of `[A-Za-z0-9_-]`, otherwise in double quotes with `"`, `\` and `'` backslash-escaped.
pub fn quote(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Renders an argument for a rule: quoted only when iptables-restore would otherwise split it or
/// read it differently (whitespace, quotes, backslashes, empty).
pub fn quote_arg(value: &str) -> String {
    let needs = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\\' | '\''));
    if needs {
        quote(value)
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &str) -> Vec<String> {
        match split(line) {
            Ok(words) => words.into_iter().map(|w| w.text).collect(),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    #[test]
    fn splits_on_whitespace() {
        assert_eq!(
            texts("-A  FOO\t-j ACCEPT "),
            vec!["-A", "FOO", "-j", "ACCEPT"]
        );
    }

    #[test]
    fn quoted_string_is_one_word_with_escapes() {
        let words = split(r#"--comment "ns/svc:p \"cluster\" IP" -j X"#).unwrap_or_default();
        assert_eq!(words.len(), 4);
        assert_eq!(words[1].text, r#"ns/svc:p "cluster" IP"#);
        assert!(words[1].quoted);
        assert_eq!(words[1].start, 10);
        assert!(!words[2].quoted);
    }

    #[test]
    fn empty_quotes_give_an_empty_word() {
        assert_eq!(texts(r#"a "" b"#), vec!["a", "", "b"]);
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        assert_eq!(
            split(r#"--comment "abc"#),
            Err(TokenError::UnterminatedQuote)
        );
    }

    #[test]
    fn backslash_outside_quotes_is_literal() {
        assert_eq!(texts(r"a\b"), vec![r"a\b"]);
    }

    #[test]
    fn quote_matches_iptables_save() {
        assert_eq!(quote("demo_web-1"), "demo_web-1");
        assert_eq!(quote("demo/web:http"), "\"demo/web:http\"");
        assert_eq!(quote(r#"a "b" \ c's"#), r#""a \"b\" \\ c\'s""#);
        assert_eq!(quote(""), "\"\"");
    }

    #[test]
    fn quote_round_trips_through_split() {
        for value in [
            "plain",
            "with space",
            r#"q"uo\te's"#,
            "",
            "ns/svc:p -> 1.2.3.4:80",
        ] {
            let words = split(&quote(value)).unwrap_or_default();
            assert_eq!(words.len(), 1, "{value}");
            assert_eq!(words[0].text, value);
        }
    }

    #[test]
    fn option_and_bang_detection() {
        let words = split(r#"! -s "-x" - --dport"#).unwrap_or_default();
        assert!(words[0].is_bang());
        assert!(words[1].is_option());
        assert!(!words[2].is_option());
        assert!(!words[3].is_option());
        assert!(words[4].is_option());
    }
}
