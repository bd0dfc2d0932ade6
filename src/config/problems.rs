//! Every problem of a configuration at once, each naming its key and line.
//!
//! The checks push what they find into [`Problems`] instead of returning at the
//! first, so that one `hookrelay check` lists them all. Values that could not be
//! read are left out of the configuration ([`Problems::unread`]); what the checks
//! would then say about them, or about the tables holding them, is not reported:
//! it would be about a default, not about the file.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key at fault (`sources.github.secret_env`); a segment
    /// that is not a bare key is quoted (`librdkafka."sasl.password"`).
    pub key: String,
    pub why: String,
    /// 1-based line of the key in the file, or of the nearest table holding it
    /// that is there; `None` when the text is not a file's, or nothing matches.
    pub line: Option<usize>,
}

/// What is wrong with a configuration, in the file's order once located.
#[derive(Debug, Clone, Default)]
pub struct Problems {
    list: Vec<Problem>,
    /// Keys whose values could not be read and were left out: problems at them,
    /// under them or at a table holding them are about defaults, and dropped.
    unread: Vec<String>,
    /// The file the lines are in, once [`Problems::locate`] knows them.
    file: Option<PathBuf>,
}

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records a problem, unless it is about a value left out as unreadable.
    pub fn push(&mut self, key: impl Into<String>, why: impl fmt::Display) {
        let key = key.into();
        if self.is_unread(&key) {
            return;
        }
        let why = why.to_string();
        if !self.list.iter().any(|p| p.key == key && p.why == why) {
            self.list.push(Problem {
                key,
                why,
                line: None,
            });
        }
    }

    /// Records a value that could not be read (`why`), and that it was left out.
    /// `why` is `None` when the problem is already recorded (a required field
    /// reported at its own key, whose table then went too).
    /// Never itself dropped: it is about the file as written.
    pub(super) fn unread(&mut self, key: String, why: Option<String>) {
        if let Some(why) = why
            && !self.list.iter().any(|p| p.key == key && p.why == why)
        {
            self.list.push(Problem {
                key: key.clone(),
                why,
                line: None,
            });
        }
        self.unread.push(key);
    }

    /// Whether `key` is, is under, or holds a value left out as unreadable.
    pub fn is_unread(&self, key: &str) -> bool {
        self.unread
            .iter()
            .any(|u| u.is_empty() || related(u, key) || related(key, u))
    }

    /// Adds a helper's error (a secret that cannot be read, a bad template).
    pub fn add(&mut self, e: super::ConfigError) {
        match e {
            super::ConfigError::Invalid(problems) => self.extend(problems),
            other => self.push("", other),
        }
    }

    /// Adds another collection's problems (filtered by what this one left out).
    pub fn extend(&mut self, other: Problems) {
        for p in other.list {
            self.push(p.key, p.why);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter()
    }

    /// `Ok` when there is nothing to report.
    pub fn into_result(self) -> Result<(), super::ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(super::ConfigError::Invalid(self))
        }
    }

    /// Gives each problem the line of its key in `text` (the contents of `file`)
    /// and sorts them in the file's order.
    pub fn locate(&mut self, file: &Path, text: &str) {
        if let Ok(doc) = DeTable::parse(text) {
            for p in &mut self.list {
                p.line = line_of(doc.get_ref(), text, &p.key);
            }
        }
        self.list.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        self.file = Some(file.to_path_buf());
    }

    /// One line per problem: `file:line: key: why`.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.list.iter().map(|p| {
            let at = match (&self.file, p.line) {
                (Some(f), Some(l)) => format!("{}:{l}: ", f.display()),
                (Some(f), None) => format!("{}: ", f.display()),
                (None, _) => String::new(),
            };
            match p.key.as_str() {
                "" => format!("{at}{}", p.why),
                key => format!("{at}{key}: {}", p.why),
            }
        })
    }
}

/// One problem on one line; several after a line that counts them.
impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.list.len() > 1 {
            let n = self.list.len();
            match &self.file {
                Some(file) => write!(f, "{n} problems in {}:", file.display())?,
                None => write!(f, "{n} problems:")?,
            }
            for line in self.lines() {
                write!(f, "\n{line}")?;
            }
            return Ok(());
        }
        for line in self.lines() {
            f.write_str(&line)?;
        }
        Ok(())
    }
}

/// Whether `inner` is `outer` or a key under it.
fn related(outer: &str, inner: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A key segment as written in a dotted path: bare when TOML allows, else quoted.
pub fn segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

/// The dotted path of `segments`.
pub fn dotted(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| segment(s))
        .collect::<Vec<_>>()
        .join(".")
}

/// The segments of a dotted path, quotes removed (`a."b.c"` is `a`, `b.c`).
fn split(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = key.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => current.extend(chars.next()),
            '.' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out
}

/// The line of `key` in the document, or of its nearest table that is there.
fn line_of(doc: &DeTable<'_>, text: &str, key: &str) -> Option<usize> {
    let mut table = doc;
    let mut found = None;
    for seg in split(key) {
        let Some((k, v)) = table.get_key_value(seg.as_str()) else {
            break;
        };
        found = Some(k.span().start);
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    found.map(|offset| line_at(text, offset))
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_and_join_with_quotes() {
        assert_eq!(split("a.b"), ["a", "b"]);
        assert_eq!(
            split("sinks.k.librdkafka.\"sasl.password\""),
            ["sinks", "k", "librdkafka", "sasl.password"]
        );
        let segs = ["a".to_string(), "sasl.password".to_string()];
        assert_eq!(dotted(&segs), "a.\"sasl.password\"");
        assert_eq!(split(&dotted(&segs)), segs);
    }

    #[test]
    fn lines_come_from_the_key_or_its_nearest_table() {
        let text = "[server]\nlisten = \"x\"\n\n[sinks.bus]\ntype = \"kafka\"\n[sinks.bus.librdkafka]\n\"a.b\" = \"1\"\n";
        let doc = DeTable::parse(text).unwrap();
        let at = |k: &str| line_of(doc.get_ref(), text, k);
        assert_eq!(at("server.listen"), Some(2));
        assert_eq!(at("server.admin_listen"), Some(1));
        assert_eq!(at("sinks.bus.type"), Some(5));
        assert_eq!(at("sinks.bus.librdkafka.\"a.b\""), Some(7));
        assert_eq!(at("sinks.bus.brokers"), Some(4));
        assert_eq!(at("sources"), None);
    }

    #[test]
    fn problems_about_unread_values_are_dropped() {
        let mut p = Problems::new();
        p.unread("sources.a.secret_env".into(), Some("bad type".into()));
        p.push("sources.a.secret_env", "set secret_env");
        p.push("sources.a", "a bad name");
        p.push("sources.ab.topic", "kept");
        p.push("sources.ab.topic", "kept");
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["sources.a.secret_env", "sources.ab.topic"]);
        assert_eq!(p.iter().next().unwrap().why, "bad type");
    }
}
