//! Admin API request bodies: JSON → typed input, with a 400 naming the field for
//! every problem (wrong type, bad CIDR, bad timestamp, unknown field).

use std::collections::BTreeMap;

use ipnet::IpNet;
use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::lifecycle::{LifecycleError, NewToken, TokenPatch, invalid};
use crate::store::{RateLimit, TokenType};

/// A JSON object being taken apart field by field.
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// Parses `body` as a JSON object (an empty body is `{}`).
    pub fn parse(body: &[u8]) -> Result<Self, LifecycleError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields { map: Map::new() });
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields { map }),
            Ok(_) => Err(invalid("body", "must be a JSON object")),
            Err(e) => Err(invalid("body", format!("invalid JSON: {e}"))),
        }
    }

    /// Removes and returns a field; `Some(Value::Null)` for an explicit null.
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// Fails on any field nobody took.
    pub fn finish(self) -> Result<(), LifecycleError> {
        match self.map.keys().next() {
            Some(k) => Err(invalid(k, "unknown field")),
            None => Ok(()),
        }
    }

    /// A string field (`null` = absent).
    pub fn string(&mut self, key: &str) -> Result<Option<String>, LifecycleError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(key, "must be a string")),
        }
    }

    /// A boolean field.
    pub fn boolean(&mut self, key: &str) -> Result<Option<bool>, LifecycleError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(invalid(key, "must be true or false")),
        }
    }

    /// A non-negative integer field.
    pub fn uint(&mut self, key: &str) -> Result<Option<u64>, LifecycleError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(key, "must be a non-negative integer")),
            Some(_) => Err(invalid(key, "must be a non-negative integer")),
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, LifecycleError> {
        match self.take(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(invalid(key, "must be a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(invalid(key, "must be a list of strings")),
        }
    }

    /// A timestamp: absent → `None`, `null` → `Some(None)`, RFC 3339 → `Some(Some(t))`.
    pub fn timestamp(&mut self, key: &str) -> Result<Option<Option<Timestamp>>, LifecycleError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => s
                .parse::<Timestamp>()
                .map(|t| Some(Some(t)))
                .map_err(|_| invalid(key, "must be an RFC 3339 timestamp or null")),
            Some(_) => Err(invalid(key, "must be an RFC 3339 timestamp or null")),
        }
    }

    /// `ipAllowlist` (or its alias `ipWhitelist`): CIDRs or single IPs.
    pub fn allowlist(&mut self) -> Result<Option<Vec<IpNet>>, LifecycleError> {
        let a = self.strings("ipAllowlist")?;
        let b = self.strings("ipWhitelist")?;
        let (field, list) = match (a, b) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "ipWhitelist",
                    "give ipAllowlist or ipWhitelist, not both",
                ));
            }
            (Some(l), None) => ("ipAllowlist", l),
            (None, Some(l)) => ("ipWhitelist", l),
            (None, None) => return Ok(None),
        };
        list.iter()
            .map(|s| {
                parse_net(s)
                    .ok_or_else(|| invalid(field, format!("{s:?} is not a CIDR or IP address")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// `rateLimit`: absent → `None`, `null` → `Some(None)`.
    pub fn rate_limit(&mut self) -> Result<Option<Option<RateLimit>>, LifecycleError> {
        match self.take("rateLimit") {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => serde_json::from_value::<RateLimit>(v)
                .map(|r| Some(Some(r)))
                .map_err(|e| {
                    invalid(
                        "rateLimit",
                        format!("expected {{\"requests\", \"perSeconds\", \"burst\"}}: {e}"),
                    )
                }),
        }
    }

    /// `metadata`: a string → string map.
    pub fn metadata(&mut self) -> Result<Option<BTreeMap<String, String>>, LifecycleError> {
        match self.take("metadata") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(invalid(
                        "metadata",
                        format!("value of {k:?} must be a string"),
                    )),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(_) => Err(invalid("metadata", "must be an object of strings")),
        }
    }

    /// `type`.
    pub fn kind(&mut self) -> Result<Option<TokenType>, LifecycleError> {
        match self.string("type")?.as_deref() {
            None => Ok(None),
            Some("user") => Ok(Some(TokenType::User)),
            Some("organization") => Ok(Some(TokenType::Organization)),
            Some("project") => Ok(Some(TokenType::Project)),
            Some(_) => Err(invalid("type", "must be user, organization or project")),
        }
    }
}

/// A CIDR, or a single IP as a host network.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// The fields shared by create and import.
pub fn new_token(f: &mut Fields) -> Result<NewToken, LifecycleError> {
    let name = f
        .string("name")?
        .ok_or_else(|| invalid("name", "is required"))?;
    // Required, but a tokens:self caller's own owner is filled in later, so an absent
    // ownerId is reported by the lifecycle's validation instead.
    let owner_id = f.string("ownerId")?.unwrap_or_default();
    let mut expires_at = f.timestamp("expiresAt")?;
    if let Some(days) = f.uint("expiresInDays")? {
        if expires_at.is_some() {
            return Err(invalid(
                "expiresInDays",
                "give expiresAt or expiresInDays, not both",
            ));
        }
        if days == 0 || days > 36500 {
            return Err(invalid("expiresInDays", "must be 1-36500"));
        }
        let at = Timestamp::now() + jiff::SignedDuration::from_hours(24 * days as i64);
        expires_at = Some(Some(at));
    }
    Ok(NewToken {
        name,
        description: f.string("description")?.unwrap_or_default(),
        kind: f.kind()?,
        owner_id,
        org_id: f.string("orgId")?,
        project_id: f.string("projectId")?,
        permissions: f.strings("permissions")?.unwrap_or_default(),
        scopes: f.strings("scopes")?.unwrap_or_default(),
        expires_at,
        ip_allowlist: f.allowlist()?.unwrap_or_default(),
        rate_limit: f.rate_limit()?.flatten(),
        metadata: f.metadata()?.unwrap_or_default(),
    })
}

/// A PATCH body.
pub fn patch(f: &mut Fields) -> Result<TokenPatch, LifecycleError> {
    Ok(TokenPatch {
        name: f.string("name")?,
        description: f.string("description")?,
        permissions: f.strings("permissions")?,
        scopes: f.strings("scopes")?,
        expires_at: f.timestamp("expiresAt")?,
        is_active: f.boolean("isActive")?,
        ip_allowlist: f.allowlist()?,
        rate_limit: f.rate_limit()?,
        metadata: f.metadata()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: LifecycleError) -> String {
        match e {
            LifecycleError::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"ownerId":"u"}"#, "name"),
            (r#"{"name":1,"ownerId":"u"}"#, "name"),
            (
                r#"{"name":"n","ownerId":"u","ipAllowlist":["nope"]}"#,
                "ipAllowlist",
            ),
            (
                r#"{"name":"n","ownerId":"u","ipWhitelist":["1.2.3.4/99"]}"#,
                "ipWhitelist",
            ),
            (
                r#"{"name":"n","ownerId":"u","expiresAt":"tomorrow"}"#,
                "expiresAt",
            ),
            (r#"{"name":"n","ownerId":"u","type":"robot"}"#, "type"),
            (
                r#"{"name":"n","ownerId":"u","rateLimit":{"requests":"x"}}"#,
                "rateLimit",
            ),
            (
                r#"{"name":"n","ownerId":"u","metadata":{"a":1}}"#,
                "metadata",
            ),
        ];
        for (body, field) in cases {
            let mut f = Fields::parse(body.as_bytes()).unwrap();
            assert_eq!(field_of(new_token(&mut f).unwrap_err()), *field, "{body}");
        }
        let mut f = Fields::parse(br#"{"name":"n","ownerId":"u","colour":"red"}"#).unwrap();
        new_token(&mut f).unwrap();
        assert_eq!(field_of(f.finish().unwrap_err()), "colour");
        assert_eq!(field_of(Fields::parse(b"[1]").err().unwrap()), "body");
        assert_eq!(field_of(Fields::parse(b"{").err().unwrap()), "body");
    }

    #[test]
    fn allowlist_accepts_single_ips_and_alias() {
        let mut f = Fields::parse(br#"{"ipWhitelist":["10.0.0.0/8","192.0.2.1","::1"]}"#).unwrap();
        let l = f.allowlist().unwrap().unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1].to_string(), "192.0.2.1/32");
    }

    #[test]
    fn null_expiry_means_never_and_absent_means_default() {
        let mut f = Fields::parse(br#"{"expiresAt":null}"#).unwrap();
        assert_eq!(f.timestamp("expiresAt").unwrap(), Some(None));
        let mut f = Fields::parse(b"{}").unwrap();
        assert_eq!(f.timestamp("expiresAt").unwrap(), None);
    }
}
