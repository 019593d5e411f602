//! Configuration: YAML file → raw serde structs → validated [`Settings`].
//!
//! Two stages (as in rpxy): `raw` mirrors the file with `deny_unknown_fields`;
//! `validate` turns it into [`Settings`], collecting *every* problem with its field
//! path (`routes[1].upstream: unknown upstream "billing"`) before failing.
//! `${ENV_NAME}` in any string value is replaced from the environment first (`env`).

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// The variables the shipped examples read; everything else is unset.
    fn example_env(name: &str) -> Option<String> {
        match name {
            "PATGATE_ADMIN_KEYS" => Some(format!("ops:{HASH}")),
            "PATGATE_REDIS_URL" => Some("redis://redis.internal:6379".into()),
            _ => None,
        }
    }

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    fn load_example(name: &str, env: EnvLookup<'_>) -> Settings {
        let path = examples_dir().join(name);
        match load_with_env(&path, env) {
            Ok(s) => s,
            Err(e) => panic!("{} does not validate:\n{e}", path.display()),
        }
    }

    #[test]
    fn every_shipped_example_config_loads() {
        let mut seen = 0;
        for entry in std::fs::read_dir(examples_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                for env in [&example_env as EnvLookup<'_>, &|_: &str| None] {
                    if let Err(e) = load_with_env(&path, env) {
                        panic!("{} does not validate:\n{e}", path.display());
                    }
                }
                seen += 1;
            }
        }
        assert!(
            seen >= 3,
            "expected patgate.yaml, sidecar.yaml and dev.yaml"
        );
    }

    #[test]
    fn standalone_example_uses_redis_and_env_admin_keys() {
        let s = load_example("patgate.yaml", &example_env);
        let StoreSettings::Redis(r) = &s.store else {
            panic!("expected redis, got {:?}", s.store)
        };
        assert_eq!(r.urls, vec!["redis://redis.internal:6379".to_owned()]);
        assert_eq!(s.admin.api_keys.len(), 1);
        assert_eq!(s.admin.api_keys[0].name, "ops");
        assert_eq!(s.rate_limit.mode, RateLimitMode::Redis);
        assert_eq!(s.routes.len(), 3);
        // Without the variables the fallbacks apply.
        let s = load_example("patgate.yaml", &|_| None);
        assert!(s.admin.api_keys.is_empty());
        let StoreSettings::Redis(r) = &s.store else {
            panic!("expected redis")
        };
        assert_eq!(r.urls, vec!["redis://127.0.0.1:6379".to_owned()]);
    }

    #[test]
    fn sidecar_example_fronts_localhost_8000() {
        let s = load_example("sidecar.yaml", &example_env);
        assert_eq!(s.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(matches!(s.store, StoreSettings::Redis(_)));
        for r in &s.routes {
            assert_eq!(r.upstream.urls[0], "http://127.0.0.1:8000/");
        }
    }

    #[test]
    fn dev_example_uses_the_embedded_store_under_data() {
        let s = load_example("dev.yaml", &|_| None);
        assert_eq!(
            s.store,
            StoreSettings::Embedded(EmbeddedSettings {
                path: "data/patgate.redb".into(),
                audit_max_events: 100_000,
            })
        );
        assert_eq!(s.admin.api_keys.len(), 1);
        assert_eq!(s.logging.format, LogFormat::Pretty);
    }

    #[test]
    fn unreadable_file_is_one_error_naming_the_file() {
        let path = examples_dir().join("does-not-exist.yaml");
        let e = load(&path).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].path, path.display().to_string());
        assert!(e.0[0].reason.starts_with("cannot read config file"), "{e}");
    }

    #[test]
    fn load_reads_a_file_and_from_yaml_reads_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: 127.0.0.1:1234\n").unwrap();
        assert_eq!(load(&path).unwrap().listen.port(), 1234);
        assert_eq!(
            from_yaml("listen: 127.0.0.1:1235\n").unwrap().listen.port(),
            1235
        );
    }

    #[test]
    fn errors_print_one_line_each() {
        let e = from_yaml("listen: x\nwhoami_path: y\n").unwrap_err();
        let text = e.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.lines().all(|l| l.starts_with("config error: ")),
            "{text}"
        );
    }
}
