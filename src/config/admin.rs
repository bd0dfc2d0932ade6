//! `[admin]`: the bearer token that opens `/admin/` on the admin listener.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Shorter tokens are refused: the admin API can pause delivery and re-publish
/// events, so a guessable token is worse than none.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin API is off (404) unless a token is configured, so that turning it on
/// is a decision, never a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Environment variable holding the token (a Kubernetes Secret as env).
    pub token_env: Option<String>,
    /// File holding the token (a mounted Secret); surrounding whitespace is trimmed.
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The token, or `None` when the admin API is off. Read at startup: a missing
    /// variable or file stops `run` and `check` alike, naming the key.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let (key, token) = match (&self.token_env, &self.token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "admin.token_env",
                    "set token_env or token_file, not both",
                ));
            }
            (Some(var), None) => (
                "admin.token_env",
                std::env::var(var).map_err(|_| {
                    invalid(
                        "admin.token_env",
                        format!("environment variable {var} is not set"),
                    )
                })?,
            ),
            (None, Some(path)) => (
                "admin.token_file",
                std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?,
            ),
        };
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(invalid(
                key,
                format!("the token must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                key,
                "the token must be printable ASCII without spaces (it travels in a header)",
            ));
        }
        Ok(Some(token.to_string()))
    }
}
