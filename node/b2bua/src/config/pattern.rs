//! [`Pattern`]: a compiled regular expression that keeps its source text, so the configuration
//! model that holds it stays `Clone + PartialEq + Serialize + Deserialize` (equality and the
//! wire form are the source text; the compiled form is rebuilt on deserialisation).

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Upper bound on the compiled size of one configured regex (bytes). Patterns are operator
/// input and are evaluated on every call, so a pathological one is refused, not compiled.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A regular expression from the configuration (Rust `regex` syntax, unanchored: write `^` and
/// `$` to match a whole number).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source`; the error is the regex crate's explanation.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// The text the pattern was written as.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled expression.
    pub fn regex(&self) -> &Regex {
        &self.regex
    }

    /// Whether the pattern matches anywhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_and_serde_use_the_source_text() {
        let a = Pattern::new(r"^\+49(\d+)$").unwrap();
        let b = Pattern::new(r"^\+49(\d+)$").unwrap();
        assert_eq!(a, b);
        assert!(a.is_match("+4930123"));
        let text = toml::to_string(&std::collections::BTreeMap::from([("p", a.clone())])).unwrap();
        let back: std::collections::BTreeMap<String, Pattern> = toml::from_str(&text).unwrap();
        assert_eq!(back["p"], a);
    }

    #[test]
    fn bad_regex_is_refused() {
        assert!(Pattern::new("(").is_err());
    }
}
