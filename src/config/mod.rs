//! Configuration: YAML file → raw serde structs → validated [`Settings`].
//!
//! Two stages (as in rpxy): [`raw`] mirrors the file with `deny_unknown_fields`;
//! [`validate`] turns it into [`Settings`], collecting *every* problem with its field
//! path (`routes[1].upstream: unknown upstream "billing"`) before failing.
//! `${ENV_NAME}` in any string value is replaced from the environment first ([`env`]).

mod env;
mod raw;
mod settings;
mod validate;

pub use env::EnvLookup;
pub use settings::*;

use std::fmt;
use std::path::Path;

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path, e.g. `routes[0].require.scopes`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.path, self.reason)
    }
}

/// Every problem found in one file; `Display` prints one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a config file, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// Validates YAML text (used by `load`, `dev` and tests), expanding `${VAR}` from the
/// process environment.
pub fn from_yaml(text: &str) -> Result<Settings, ConfigErrors> {
    from_yaml_with_env(text, &|name| std::env::var(name).ok())
}

/// [`load`] with an explicit environment (tests cannot set process variables:
/// `set_var` is `unsafe` in edition 2024 and this crate forbids `unsafe`).
pub fn load_with_env(path: &Path, env: EnvLookup<'_>) -> Result<Settings, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => from_yaml_with_env(&text, env),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            path: path.display().to_string(),
            reason: format!("cannot read config file: {e}"),
        }])),
    }
}

/// [`from_yaml`] with an explicit environment lookup.
pub fn from_yaml_with_env(text: &str, env: EnvLookup<'_>) -> Result<Settings, ConfigErrors> {
    validate::settings_from_yaml(text, env)
}
