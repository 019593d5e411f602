//! Checks that `openapi/patgate-admin.json` describes exactly [`super::routes::ROUTES`]:
//! the same (method, path) pairs, the same operation ids, the same authentication,
//! declared path parameters, and no dangling `$ref`.

use std::collections::BTreeSet;

use serde_json::Value;

use super::OPENAPI_JSON;
use super::routes::ROUTES;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi/patgate-admin.json is valid JSON")
}

/// Every (lower-case method, path) operation of the document, with its object.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let mut ops = Vec::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for (key, op) in item {
            if METHODS.contains(&key.as_str()) {
                ops.push((key.clone(), path.clone(), op));
            }
        }
    }
    ops
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

#[test]
fn document_is_openapi_3_1() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    assert!(d["info"]["title"].is_string() && d["info"]["version"].is_string());
}

#[test]
fn document_paths_and_methods_equal_the_route_table() {
    let d = doc();
    let in_doc: BTreeSet<(String, String)> = operations(&d)
        .into_iter()
        .map(|(m, p, _)| (m.to_uppercase(), p))
        .collect();
    let in_table: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(in_table.len(), ROUTES.len(), "duplicate routes in ROUTES");
    let missing: Vec<_> = in_table.difference(&in_doc).collect();
    let extra: Vec<_> = in_doc.difference(&in_table).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not documented: {missing:?}; documented but not routed: {extra:?}"
    );
}

#[test]
fn operation_ids_and_authentication_match_the_route_table() {
    let d = doc();
    assert_eq!(d["security"], serde_json::json!([{"bearerAuth": []}]));
    assert_eq!(
        d["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for r in ROUTES {
        let op = &d["paths"][r.path][r.method.to_lowercase()];
        assert_eq!(
            op["operationId"],
            r.op.operation_id(),
            "{} {}",
            r.method,
            r.path
        );
        if r.op.requires_auth() {
            assert!(op.get("security").is_none(), "{} {}", r.method, r.path);
            assert!(
                op["responses"].get("401").is_some(),
                "{} {} must document 401",
                r.method,
                r.path
            );
        } else {
            assert_eq!(
                op["security"],
                serde_json::json!([]),
                "{} {}",
                r.method,
                r.path
            );
        }
    }
}

#[test]
fn every_path_template_parameter_is_declared() {
    let d = doc();
    for (method, path, op) in operations(&d) {
        let declared: BTreeSet<String> = [&d["paths"][&path]["parameters"], &op["parameters"]]
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .map(|p| resolve(&d, p))
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{method} {path}");
                p["name"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        assert_eq!(declared, in_template, "{method} {path}");
    }
}

#[test]
fn every_ref_resolves() {
    fn walk(doc: &Value, v: &Value, refs: &mut usize) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref") {
                    let r = r.as_str().expect("$ref is a string");
                    let ptr = r
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("non-local $ref {r}"));
                    assert!(doc.pointer(ptr).is_some(), "dangling $ref {r}");
                    *refs += 1;
                }
                m.values().for_each(|c| walk(doc, c, refs));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(doc, c, refs)),
            _ => {}
        }
    }
    let d = doc();
    let mut refs = 0;
    walk(&d, &d, &mut refs);
    assert!(refs > 50, "only {refs} refs seen: is the walk broken?");
}

#[test]
fn token_record_schema_lists_every_serialized_field() {
    // A real record, serialized: its keys must be exactly the schema's properties.
    let record = crate::store::TokenRecord {
        id: "01J".into(),
        name: "n".into(),
        description: String::new(),
        prefix: "pat_abcdefgh".into(),
        kind: crate::store::TokenType::User,
        owner_id: "u".into(),
        org_id: None,
        project_id: None,
        permissions: vec![],
        scopes: vec![],
        created_at: jiff::Timestamp::UNIX_EPOCH,
        created_by: "admin:t".into(),
        expires_at: None,
        is_active: true,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        ip_allowlist: vec![],
        rate_limit: None,
        metadata: Default::default(),
    };
    let v = serde_json::to_value(&record).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let d = doc();
    let schema = &d["components"]["schemas"]["TokenRecord"];
    let props: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(keys, props);
    assert_eq!(keys, required);
}

#[test]
fn create_and_patch_schemas_list_exactly_the_accepted_fields() {
    use super::input::{Fields, new_token, patch};
    let d = doc();
    let props = |name: &str| -> Vec<String> {
        d["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    // Each documented field is consumed by the parser (no "unknown field").
    let sample = |k: &str| -> Value {
        match k {
            "permissions" | "scopes" | "ipAllowlist" | "ipWhitelist" => serde_json::json!([]),
            "expiresInDays" | "gracePeriodSeconds" => serde_json::json!(1),
            "isActive" => serde_json::json!(true),
            "metadata" => serde_json::json!({}),
            "rateLimit" | "expiresAt" => Value::Null,
            "type" => serde_json::json!("user"),
            _ => serde_json::json!("x"),
        }
    };
    for k in props("CreateRequest") {
        let mut body = serde_json::json!({"name": "n", "ownerId": "u"});
        body[&k] = sample(&k);
        let mut f = Fields::parse(body.to_string().as_bytes()).unwrap();
        new_token(&mut f).unwrap_or_else(|e| panic!("create {k}: {e}"));
        f.finish().unwrap_or_else(|e| panic!("create {k}: {e}"));
    }
    for k in props("UpdateRequest") {
        let mut body = serde_json::json!({});
        body[&k] = sample(&k);
        let mut f = Fields::parse(body.to_string().as_bytes()).unwrap();
        patch(&mut f).unwrap_or_else(|e| panic!("patch {k}: {e}"));
        f.finish().unwrap_or_else(|e| panic!("patch {k}: {e}"));
    }
    // Import = create fields + sha256 + prefix.
    let mut import = props("ImportRequest");
    import.retain(|k| k != "sha256" && k != "prefix");
    assert_eq!(import, props("CreateRequest"));
}

/// The keys of `v` and the properties of schema `name` (all of them required).
fn assert_schema_matches(v: &Value, name: &str) {
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let d = doc();
    let schema = &d["components"]["schemas"][name];
    let props: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(keys, props, "{name}");
    assert_eq!(keys, required, "{name}");
}

#[test]
fn client_ip_and_quota_schemas_list_every_serialized_field() {
    let seen = crate::store::ClientIpSeen {
        prefix: "203.0.113.0/24".parse().unwrap(),
        first_seen_at: jiff::Timestamp::UNIX_EPOCH,
        last_seen_at: jiff::Timestamp::UNIX_EPOCH,
        count: 1,
    };
    let v = serde_json::to_value(seen).unwrap();
    assert_eq!(v["prefix"], "203.0.113.0/24");
    assert_schema_matches(&v, "ClientIpSeen");

    let q = crate::config::QuotaSettings {
        requests: 10,
        period: crate::config::QuotaPeriod::Day,
        per: crate::config::QuotaSubject::Token,
    };
    let state = crate::quota::QuotaState {
        limit: 10,
        used: 1,
        reset: std::time::Duration::from_secs(5),
    };
    let v = crate::quota::admin_json(&state, &q, jiff::Timestamp::UNIX_EPOCH);
    assert_schema_matches(&v, "QuotaState");
}
