//! `patgate audit`: reads the audit trail (`GET /v1/audit`) through the admin API.
//!
//! Human output is one line per event, newest first — time, actor, action, token id,
//! source IP, outcome — then a `--cursor` hint when there are older events. Events
//! never hold secrets, so everything the API returns may be printed.

use std::process::ExitCode;

use clap::Args;
use http::Method;
use serde_json::Value;

use super::client::{AdminArgs, str_of, with_query};

/// `patgate audit` arguments.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Only events about this token id.
    #[arg(long)]
    token_id: Option<String>,
    /// Only events by this actor, e.g. `admin:ops` or `token:<id>`.
    #[arg(long)]
    actor: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Option<jiff::Timestamp>,
    /// Page size (1-1000; the API's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Cursor from a previous page (older events).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the API's JSON (`{"items": [...], "nextCursor": ...}`).
    #[arg(long)]
    json: bool,
}

fn parse_since(s: &str) -> Result<jiff::Timestamp, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an RFC 3339 time (e.g. 2025-01-31T12:00:00Z)"))
}

/// Runs `patgate audit`; exit code 0 on success, 1 on API errors, 2 on usage errors.
pub async fn run(args: AuditArgs) -> ExitCode {
    let client = match args.admin.client() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = with_query(
        "/v1/audit",
        &[
            ("tokenId", args.token_id.clone()),
            ("actor", args.actor.clone()),
            ("since", args.since.map(|t| t.to_string())),
            ("limit", args.limit.map(|n| n.to_string())),
            ("cursor", args.cursor.clone()),
        ],
    );
    let resp = match client.send(Method::GET, &path, None).await {
        Ok((_, resp)) => resp,
        Err(code) => return code,
    };
    if args.json {
        println!("{resp}");
    } else {
        print_events(&resp);
    }
    ExitCode::SUCCESS
}

fn print_events(resp: &Value) {
    println!(
        "{:<27} {:<24} {:<18} {:<26} {:<15} OUTCOME",
        "TIME", "ACTOR", "ACTION", "TOKEN", "SOURCE IP"
    );
    for e in resp["items"].as_array().into_iter().flatten() {
        println!(
            "{:<27} {:<24} {:<18} {:<26} {:<15} {}",
            str_of(e, "time"),
            str_of(e, "actor"),
            str_of(e, "action"),
            str_of(e, "tokenId"),
            str_of(e, "sourceIp"),
            str_of(e, "outcome"),
        );
    }
    if let Some(c) = resp["nextCursor"].as_str() {
        println!("\nmore: --cursor {c}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditArgs,
    }

    #[test]
    fn flags_parse_and_reject_bad_values() {
        let c = Cli::try_parse_from([
            "audit",
            "--token-id",
            "01J",
            "--since",
            "2025-01-31T12:00:00Z",
            "--limit",
            "5",
            "--json",
        ])
        .unwrap();
        assert_eq!(c.audit.token_id.as_deref(), Some("01J"));
        assert_eq!(c.audit.limit, Some(5));
        assert!(c.audit.json);
        assert!(Cli::try_parse_from(["audit", "--since", "yesterday"]).is_err());
        assert!(Cli::try_parse_from(["audit", "--limit", "0"]).is_err());
        assert!(Cli::try_parse_from(["audit", "--limit", "1001"]).is_err());
    }
}
