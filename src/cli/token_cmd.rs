//! `patgate token ...`: admin-API client subcommands. Flags mirror the JSON fields.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::client::{AdminArgs, enc, str_of, with_query};

/// `patgate token` arguments.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the API's JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TokenCommand,
}

/// Fields shared by create, update and import.
#[derive(Debug, Args, Default)]
struct FieldArgs {
    /// Name (1-100 characters).
    #[arg(long)]
    name: Option<String>,
    /// Description (≤ 500 characters).
    #[arg(long)]
    description: Option<String>,
    /// Scope (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Permission (repeatable).
    #[arg(long = "permission")]
    permissions: Vec<String>,
    /// Expire N days from now.
    #[arg(long)]
    expires_in_days: Option<u64>,
    /// Expire at an RFC 3339 time.
    #[arg(long, conflicts_with = "expires_in_days")]
    expires_at: Option<String>,
    /// Never expire.
    #[arg(long, conflicts_with_all = ["expires_in_days", "expires_at"])]
    no_expiry: bool,
    /// Allowed client CIDR or IP (repeatable).
    #[arg(long = "allow-ip")]
    allow_ip: Vec<String>,
    /// Rate limit as N/SECONDS, e.g. 100/1.
    #[arg(long)]
    rate_limit: Option<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "meta")]
    metadata: Vec<String>,
}

#[derive(Debug, Args)]
struct OwnerArgs {
    /// Owner id (X-Auth-User-Id upstream).
    #[arg(long)]
    owner: Option<String>,
    /// Organisation id.
    #[arg(long)]
    org: Option<String>,
    /// Project id.
    #[arg(long)]
    project: Option<String>,
    /// user | organization | project.
    #[arg(long = "type")]
    kind: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; prints the secret once.
    Create {
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// List tokens (never secrets).
    List {
        #[command(flatten)]
        owner: OwnerArgs,
        /// Only active (true) or inactive (false) tokens.
        #[arg(long)]
        active: Option<bool>,
        /// Search name/description.
        #[arg(long)]
        q: Option<String>,
        /// Only tokens expiring within N days.
        #[arg(long)]
        expiring_within_days: Option<u32>,
        /// Page size.
        #[arg(long)]
        limit: Option<u32>,
        /// Cursor from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one token.
    Show {
        /// Token id.
        id: String,
    },
    /// Update fields without rotating the secret.
    Update {
        /// Token id.
        id: String,
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// Deactivate (reversible).
    Deactivate {
        /// Token id.
        id: String,
    },
    /// Activate again.
    Activate {
        /// Token id.
        id: String,
    },
    /// Revoke permanently.
    Revoke {
        /// Token id.
        id: String,
    },
    /// New secret, same id; prints the secret once.
    Regenerate {
        /// Token id.
        id: String,
        /// Keep the old secret valid this long.
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
    /// Delete permanently.
    Delete {
        /// Token id.
        id: String,
    },
    /// Import an existing token by its SHA-256 (hex).
    Import {
        /// SHA-256 of the existing token, hex.
        #[arg(long)]
        sha256: String,
        /// Display prefix to show for it (≤ 12 characters).
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        owner: OwnerArgs,
        #[command(flatten)]
        fields: FieldArgs,
    },
}

fn fields_json(f: &FieldArgs, m: &mut Map<String, Value>, patch: bool) -> Result<(), String> {
    if let Some(v) = &f.name {
        m.insert("name".into(), json!(v));
    }
    if let Some(v) = &f.description {
        m.insert("description".into(), json!(v));
    }
    if !f.scopes.is_empty() {
        m.insert("scopes".into(), json!(f.scopes));
    }
    if !f.permissions.is_empty() {
        m.insert("permissions".into(), json!(f.permissions));
    }
    if let Some(d) = f.expires_in_days {
        if patch {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * d as i64);
            m.insert("expiresAt".into(), json!(at.to_string()));
        } else {
            m.insert("expiresInDays".into(), json!(d));
        }
    }
    if let Some(v) = &f.expires_at {
        m.insert("expiresAt".into(), json!(v));
    }
    if f.no_expiry {
        m.insert("expiresAt".into(), Value::Null);
    }
    if !f.allow_ip.is_empty() {
        m.insert("ipAllowlist".into(), json!(f.allow_ip));
    }
    if let Some(r) = &f.rate_limit {
        let (n, s) = r
            .split_once('/')
            .ok_or("--rate-limit: expected N/SECONDS, e.g. 100/1")?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| "--rate-limit: N must be a positive integer")?;
        let s: u32 = s
            .trim()
            .parse()
            .map_err(|_| "--rate-limit: SECONDS must be a positive integer")?;
        m.insert("rateLimit".into(), json!({"requests": n, "perSeconds": s}));
    }
    if !f.metadata.is_empty() {
        let mut meta = Map::new();
        for kv in &f.metadata {
            let (k, v) = kv.split_once('=').ok_or("--meta: expected KEY=VALUE")?;
            meta.insert(k.to_string(), json!(v));
        }
        m.insert("metadata".into(), Value::Object(meta));
    }
    Ok(())
}

fn owner_json(o: &OwnerArgs, m: &mut Map<String, Value>) {
    if let Some(v) = &o.owner {
        m.insert("ownerId".into(), json!(v));
    }
    if let Some(v) = &o.org {
        m.insert("orgId".into(), json!(v));
    }
    if let Some(v) = &o.project {
        m.insert("projectId".into(), json!(v));
    }
    if let Some(v) = &o.kind {
        m.insert("type".into(), json!(v));
    }
}

fn status_of(r: &Value) -> &'static str {
    let now = jiff::Timestamp::now();
    if !r["revokedAt"].is_null() {
        "revoked"
    } else if r["expiresAt"]
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t <= now)
    {
        "expired"
    } else if r["isActive"] == Value::Bool(false) {
        "inactive"
    } else {
        "active"
    }
}

fn print_record(r: &Value) {
    for key in [
        "id",
        "name",
        "description",
        "prefix",
        "type",
        "ownerId",
        "orgId",
        "projectId",
        "createdAt",
        "createdBy",
        "expiresAt",
        "isActive",
        "revokedAt",
        "lastUsedAt",
        "usageCount",
    ] {
        let v = &r[key];
        let shown = match v {
            Value::Null => "-".to_string(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{key:>12}: {shown}");
    }
    for key in ["scopes", "permissions", "ipAllowlist"] {
        let items: Vec<&str> = r[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{key:>12}: {}",
            if items.is_empty() {
                "-".into()
            } else {
                items.join(",")
            }
        );
    }
    println!("{:>12}: {}", "rateLimit", r["rateLimit"]);
    println!("{:>12}: {}", "status", status_of(r));
}

fn print_secret(resp: &Value) {
    println!("token: {}", str_of(resp, "token"));
    println!();
    println!("Copy it now: it will not be shown again (patgate stores only its SHA-256).");
    println!();
    print_record(&resp["record"]);
}

/// Runs a `patgate token` subcommand; exit code 0 on success, 1 on API errors,
/// 2 on usage errors.
pub async fn run(args: TokenArgs) -> ExitCode {
    let client = match args.admin.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut body = Map::new();
    let (method, path, kind) = match &args.command {
        TokenCommand::Create { owner, fields } => {
            owner_json(owner, &mut body);
            if let Err(e) = fields_json(fields, &mut body, false) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            (Method::POST, "/v1/tokens".to_string(), Out::Secret)
        }
        TokenCommand::List {
            owner,
            active,
            q,
            expiring_within_days,
            limit,
            cursor,
        } => {
            let path = with_query(
                "/v1/tokens",
                &[
                    ("ownerId", owner.owner.clone()),
                    ("orgId", owner.org.clone()),
                    ("projectId", owner.project.clone()),
                    ("type", owner.kind.clone()),
                    ("active", active.map(|b| b.to_string())),
                    ("q", q.clone()),
                    (
                        "expiringWithinDays",
                        expiring_within_days.map(|d| d.to_string()),
                    ),
                    ("limit", limit.map(|d| d.to_string())),
                    ("cursor", cursor.clone()),
                ],
            );
            (Method::GET, path, Out::List)
        }
        TokenCommand::Show { id } => (Method::GET, format!("/v1/tokens/{}", enc(id)), Out::Record),
        TokenCommand::Update { id, fields } => {
            if let Err(e) = fields_json(fields, &mut body, true) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            (
                Method::PATCH,
                format!("/v1/tokens/{}", enc(id)),
                Out::Record,
            )
        }
        TokenCommand::Deactivate { id } => (
            Method::POST,
            format!("/v1/tokens/{}/deactivate", enc(id)),
            Out::Record,
        ),
        TokenCommand::Activate { id } => (
            Method::POST,
            format!("/v1/tokens/{}/activate", enc(id)),
            Out::Record,
        ),
        TokenCommand::Revoke { id } => (
            Method::POST,
            format!("/v1/tokens/{}/revoke", enc(id)),
            Out::Record,
        ),
        TokenCommand::Regenerate { id, grace_seconds } => {
            body.insert("gracePeriodSeconds".into(), json!(grace_seconds));
            (
                Method::POST,
                format!("/v1/tokens/{}/regenerate", enc(id)),
                Out::Secret,
            )
        }
        TokenCommand::Delete { id } => (
            Method::DELETE,
            format!("/v1/tokens/{}", enc(id)),
            Out::Deleted,
        ),
        TokenCommand::Import {
            sha256,
            prefix,
            owner,
            fields,
        } => {
            body.insert("sha256".into(), json!(sha256));
            if let Some(p) = prefix {
                body.insert("prefix".into(), json!(p));
            }
            owner_json(owner, &mut body);
            if let Err(e) = fields_json(fields, &mut body, false) {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            (Method::POST, "/v1/tokens/import".to_string(), Out::Imported)
        }
    };
    let send_body = matches!(method, Method::POST | Method::PATCH).then_some(Value::Object(body));
    let (status, resp) = match client.send(method, &path, send_body).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    if args.json {
        if status == StatusCode::NO_CONTENT {
            println!("{}", json!({"deleted": true}));
        } else {
            println!("{resp}");
        }
        return ExitCode::SUCCESS;
    }
    match kind {
        Out::Secret => print_secret(&resp),
        Out::Record => print_record(&resp),
        Out::Imported => print_record(&resp["record"]),
        Out::Deleted => println!("deleted"),
        Out::List => {
            println!(
                "{:<26} {:<12} {:<24} {:<14} {:<9} {:<20}",
                "ID", "PREFIX", "NAME", "OWNER", "STATUS", "EXPIRES"
            );
            for r in resp["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<12} {:<24} {:<14} {:<9} {:<20}",
                    str_of(r, "id"),
                    str_of(r, "prefix"),
                    str_of(r, "name"),
                    str_of(r, "ownerId"),
                    status_of(r),
                    str_of(r, "expiresAt"),
                );
            }
            if let Some(c) = resp["nextCursor"].as_str() {
                println!("\nmore: --cursor {c}");
            }
        }
    }
    ExitCode::SUCCESS
}

enum Out {
    Secret,
    Record,
    Imported,
    Deleted,
    List,
}
