//! Reading a configuration file, with every problem in it at once.
//!
//! A syntax error stops reading: nothing after it can be trusted. Past that,
//! deserialization goes on past what it cannot read: the value at fault is
//! reported under its dotted key (from `serde_path_to_error`), taken out of the
//! table, and the table read again, until it reads or nothing more can be taken
//! out. A required field that is missing is reported at its table, which goes.
//! Then every check runs on what was read, and each problem gets the line of its
//! key from the document's spans.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use super::problems::{dotted, line_at, segment};
use super::{Config, ConfigError, Problems, SinksConfig, SyntaxError};

/// Values left out at most before reading gives up: enough for any file a
/// person wrote, and a bound for one that was not.
const MAX_UNREAD: usize = 500;

/// A configuration file as `check` reads it: what could be read, and everything
/// found wrong so far.
pub struct Checked {
    /// The values that could be read; those that could not are at their
    /// defaults, and no problem is reported about them but their own.
    pub config: Config,
    /// Everything wrong so far; `check` adds what only it looks at, then
    /// [`Checked::into_result`] puts lines on them.
    pub problems: Problems,
    path: PathBuf,
    text: String,
}

impl Checked {
    /// Reads and checks the file; an error only when it cannot be read or is
    /// not TOML.
    pub fn read(path: &Path) -> Result<Checked, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let (config, mut problems) = read_all(&text).map_err(|e| SyntaxError {
            path: Some(path.to_path_buf()),
            ..e
        })?;
        config.check(&mut problems);
        Ok(Checked {
            config,
            problems,
            path: path.to_path_buf(),
            text,
        })
    }

    /// The configuration, or every problem found, each with the file and line.
    pub fn into_result(mut self) -> Result<Config, ConfigError> {
        if self.problems.is_empty() {
            return Ok(self.config);
        }
        self.problems.locate(&self.path, &self.text);
        Err(ConfigError::Invalid(self.problems))
    }

    /// `${VAR}` in a string value: hookrelay expands no variables, so it is used
    /// as written, which is seldom what was meant. Each as `file:line: key: why`.
    pub fn warnings(&self) -> Vec<String> {
        let Ok(doc) = DeTable::parse(&self.text) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        variables(doc.get_ref(), &mut Vec::new(), &mut found);
        found.sort_by_key(|(_, offset, _)| *offset);
        found
            .into_iter()
            .map(|(segments, offset, var)| {
                format!(
                    "{}:{}: {}: \"${{{var}}}\" is used as written: hookrelay does not expand environment variables in values; {}",
                    self.path.display(),
                    line_at(&self.text, offset),
                    dotted(&segments),
                    env_instead(&segments, &var)
                )
            })
            .collect()
    }
}

impl Config {
    /// Reads, parses and checks the file (secrets are not read yet); the error
    /// lists every problem found, each with its line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Checked::read(path)?.into_result()
    }

    /// Parses TOML text without the checks; the error lists every value that
    /// could not be read, naming its key.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let (config, problems) = read_all(text)?;
        problems.into_result()?;
        Ok(config)
    }
}

/// Deserializes what can be read from `text`; what cannot is in the problems.
fn read_all(text: &str) -> Result<(Config, Problems), SyntaxError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| SyntaxError {
        path: None,
        message: e.to_string().trim_end().to_string(),
    })?;
    let mut problems = Problems::new();
    // Each sink's table is read on its own: its type decides what it holds.
    let sinks = table.remove("sinks");
    let mut config = deserialize_all::<Config>(table, &[], &mut problems).unwrap_or_else(|| {
        problems.unread(String::new(), None);
        Config::default()
    });
    config.sinks = match sinks {
        None => SinksConfig::default(),
        Some(toml::Value::Table(t)) => SinksConfig::read(t, &mut problems),
        Some(_) => {
            problems.unread(
                "sinks".into(),
                Some("must be a table of sinks by name".into()),
            );
            SinksConfig::default()
        }
    };
    Ok((config, problems))
}

/// Deserializes `table` (found at `at`), leaving out each value that cannot be
/// read and recording why, until it reads; `None` if it never does.
pub(super) fn deserialize_all<T: DeserializeOwned>(
    mut table: toml::Table,
    at: &[String],
    problems: &mut Problems,
) -> Option<T> {
    for _ in 0..MAX_UNREAD {
        let e = match serde_path_to_error::deserialize::<_, T>(table.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        // A value inside an array is reported, and left out, as the whole array.
        let mut path: Vec<String> = at.to_vec();
        for s in e.path().iter() {
            match s {
                serde_path_to_error::Segment::Map { key }
                | serde_path_to_error::Segment::Enum { variant: key } => path.push(key.clone()),
                _ => break,
            }
        }
        let why = e.into_inner().message().to_string();
        let own = path.len() - at.len();
        if let Some(field) = missing_field(&why) {
            // Reported at its table, which cannot be read without it: unless the
            // field was itself left out, and so is reported already.
            let mut full = path.clone();
            full.push(field.to_string());
            let reported = problems.is_unread(&dotted(&full));
            problems.unread(dotted(&path), (!reported).then_some(why));
        } else if why.starts_with("unknown field") {
            // Its value never mattered: no check of its table is held back.
            problems.push(dotted(&path), why);
        } else {
            problems.unread(dotted(&path), Some(why));
        }
        if own == 0 || !remove(&mut table, &path[at.len()..]) {
            return None;
        }
    }
    problems.push(
        dotted(at),
        format!("more than {MAX_UNREAD} values cannot be read; stopped there"),
    );
    None
}

/// The field of serde's "missing field `name`".
fn missing_field(why: &str) -> Option<&str> {
    why.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the value at `path` under `table`; `false` if it is not there.
fn remove(table: &mut toml::Table, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(toml::Value::Table(t)) => remove(t, rest),
            _ => false,
        },
    }
}

/// Every string value holding `${NAME}`: its key's segments, where, and NAME.
fn variables(
    table: &DeTable<'_>,
    segments: &mut Vec<String>,
    found: &mut Vec<(Vec<String>, usize, String)>,
) {
    for (k, v) in table.iter() {
        segments.push(k.get_ref().to_string());
        value_variables(v.get_ref(), v.span().start, segments, found);
        segments.pop();
    }
}

fn value_variables(
    value: &DeValue<'_>,
    offset: usize,
    segments: &mut Vec<String>,
    found: &mut Vec<(Vec<String>, usize, String)>,
) {
    match value {
        DeValue::String(s) => {
            if let Some(var) = variable(s) {
                found.push((segments.clone(), offset, var.to_string()));
            }
        }
        DeValue::Table(t) => variables(t, segments, found),
        DeValue::Array(a) => {
            for item in a.iter() {
                value_variables(item.get_ref(), item.span().start, segments, found);
            }
        }
        _ => {}
    }
}

/// The first `${NAME}` in `s` (NAME a shell variable's name).
fn variable(s: &str) -> Option<&str> {
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        if let Some(end) = after.find('}') {
            let name = &after[..end];
            let shell = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if shell {
                return Some(name);
            }
        }
        rest = after;
    }
    None
}

/// What to write instead of `${var}` at the key `segments`.
fn env_instead(segments: &[String], var: &str) -> String {
    let names: Vec<&str> = segments.iter().map(String::as_str).collect();
    match names.as_slice() {
        [.., "librdkafka", prop] => format!(
            "name the variable in librdkafka_from_env instead: {} = \"{var}\"",
            segment(prop)
        ),
        [.., key @ ("secret" | "verify_token" | "redis_url" | "token" | "password")] => {
            format!("name the variable instead: {key}_env = \"{var}\"")
        }
        [.., "uri"] => format!(
            "for a password, name the variable instead: password_env = \"{var}\""
        ),
        _ => "where a secret belongs, keys ending in _env (secret_env, password_env, token_env, librdkafka_from_env) take the variable's name".to_string(),
    }
}
