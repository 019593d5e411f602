//! `${ENV_NAME}` expansion in string values, done on the parsed YAML tree.
//!
//! Expanding after parsing (not on the raw text) means a secret containing `#`, `:`
//! or quotes can never change the file's structure, and every missing variable is
//! reported with the field path that referenced it.
//!
//! Syntax: `${NAME}` (must be set), `${NAME:-fallback}` (fallback when unset or
//! empty), `$${` for a literal `${`. Names are `[A-Za-z_][A-Za-z0-9_]*`. Only string
//! values are expanded — never keys — and expanded text is not expanded again.

use serde_yaml::Value;

use super::ConfigError;

/// Looks a variable up; the real one reads the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands every string value under `value` in place; problems go to `errs` with the
/// path of the value (`base` is the path of `value` itself, empty for the root).
pub(crate) fn expand_tree(
    value: &mut Value,
    base: &str,
    env: EnvLookup<'_>,
    errs: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                match expand_str(s, env) {
                    Ok(expanded) => *s = expanded,
                    Err(reasons) => errs.extend(reasons.into_iter().map(|reason| ConfigError {
                        path: display_root(base),
                        reason,
                    })),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{base}[{i}]"), env, errs);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let path = join(base, &key_to_string(k));
                expand_tree(v, &path, env, errs);
            }
        }
        Value::Tagged(tagged) => expand_tree(&mut tagged.value, base, env, errs),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `a` + `.b`, or just `b` at the root.
pub(crate) fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

/// The root of the document has no field name; call it `<root>`.
pub(crate) fn display_root(path: &str) -> String {
    if path.is_empty() {
        "<root>".to_owned()
    } else {
        path.to_owned()
    }
}

/// A mapping key as it appears in a field path.
pub(crate) fn key_to_string(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".to_owned(),
        // Complex keys never name a patgate field; any stable rendering will do.
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned()),
    }
}

/// Expands one string; returns every problem in it (never the variable's value).
pub(crate) fn expand_str(s: &str, env: EnvLookup<'_>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut errs = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                errs.push("unterminated `${` (write `$${` for a literal `${`)".to_owned());
                rest = "";
                break;
            };
            let inner = &after[..end];
            rest = &after[end + 1..];
            let (name, fallback) = match inner.split_once(":-") {
                Some((n, f)) => (n, Some(f)),
                None => (inner, None),
            };
            if !is_var_name(name) {
                errs.push(format!("invalid environment variable name `{name}`"));
                continue;
            }
            match (env(name), fallback) {
                (Some(v), Some(f)) if v.is_empty() => out.push_str(f),
                (Some(v), _) => out.push_str(&v),
                (None, Some(f)) => out.push_str(f),
                (None, None) => errs.push(format!("environment variable {name} is not set")),
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            "TRICKY" => Some("a#b: ${HOST}".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_anywhere_in_the_string() {
        assert_eq!(
            expand_str("redis://${HOST}:6379", &env).unwrap(),
            "redis://db.internal:6379"
        );
        assert_eq!(
            expand_str("${HOST}${HOST}", &env).unwrap(),
            "db.internaldb.internal"
        );
    }

    #[test]
    fn fallback_applies_when_unset_or_empty() {
        assert_eq!(expand_str("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand_str("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(expand_str("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand_str("${HOST:-x}", &env).unwrap(), "db.internal");
    }

    #[test]
    fn double_dollar_escapes_and_lone_dollar_is_literal() {
        assert_eq!(expand_str("$${HOST}", &env).unwrap(), "${HOST}");
        assert_eq!(expand_str("a$b$", &env).unwrap(), "a$b$");
    }

    #[test]
    fn expanded_text_is_not_expanded_again() {
        assert_eq!(expand_str("${TRICKY}", &env).unwrap(), "a#b: ${HOST}");
    }

    #[test]
    fn every_missing_variable_is_reported() {
        let errs = expand_str("${A}-${B}-${1X}-${C", &env).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "environment variable A is not set".to_owned(),
                "environment variable B is not set".to_owned(),
                "invalid environment variable name `1X`".to_owned(),
                "unterminated `${` (write `$${` for a literal `${`)".to_owned(),
            ]
        );
    }

    #[test]
    fn tree_errors_carry_the_field_path() {
        let mut v: Value = serde_yaml::from_str(
            "admin:\n  api_keys:\n    - sha256: ${MISSING}\nx: [\"${HOST}\"]\n",
        )
        .unwrap();
        let mut errs = Vec::new();
        expand_tree(&mut v, "", &env, &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "admin.api_keys[0].sha256");
        assert_eq!(v["x"][0], Value::String("db.internal".into()));
    }
}
