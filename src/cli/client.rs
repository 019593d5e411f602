//! A minimal admin-API client for the CLI (hyper-util; `http://`, or `https://`
//! verified against the system roots or `--ca-cert`), and the options every
//! admin-API subcommand shares (`--admin-url`, `--ca-cert`, `--config`,
//! `$PATGATE_ADMIN_KEY`).

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::DEFAULT_CONFIG;

/// Where the admin API is, for `patgate token` and `patgate audit`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin API base URL (default: the config's admin.listen, over https:// when
    /// admin.tls is set).
    #[arg(long, global = true)]
    pub admin_url: Option<String>,
    /// PEM CA bundle to verify an https:// admin API with (default: system roots).
    #[arg(long, env = "PATGATE_ADMIN_CA", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Config file (only read to find admin.listen).
    #[arg(long, env = "PATGATE_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
}

impl AdminArgs {
    /// `--admin-url`, else the config's `admin.listen` (`https://` when `admin.tls`
    /// is set), else the default listener.
    pub fn url(&self) -> String {
        if let Some(u) = &self.admin_url {
            return u.clone();
        }
        match crate::config::load(&self.config) {
            Ok(s) if s.admin.tls.is_some() => format!("https://{}", s.admin.listen),
            Ok(s) => format!("http://{}", s.admin.listen),
            Err(_) => "http://127.0.0.1:9091".into(),
        }
    }

    /// A client with the key from `$PATGATE_ADMIN_KEY`; exit code 2 (usage) when it
    /// is unset. The key is never printed.
    pub fn client(&self) -> Result<AdminClient, ExitCode> {
        let Ok(key) = std::env::var("PATGATE_ADMIN_KEY") else {
            eprintln!("error: set PATGATE_ADMIN_KEY to an admin key (see `patgate admin-key new`)");
            return Err(ExitCode::from(2));
        };
        AdminClient::new(&self.url(), key, self.ca_cert.as_deref()).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `path?k=v&...` with the pairs whose value is set, values percent-encoded.
pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let qs: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if qs.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", qs.join("&"))
    }
}

/// A string field of a JSON object, or `-`.
pub fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

/// A client bound to one admin URL and key.
pub struct AdminClient {
    base: String,
    key: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// `base` like `http://127.0.0.1:9091` or `https://admin.internal:9091`; an
    /// `https://` one is verified against `ca` (PEM) or the system roots. Fails when
    /// `ca` is unusable.
    pub fn new(base: &str, key: String, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let files = crate::tls::ClientFiles {
            ca,
            ..Default::default()
        };
        let tls = crate::tls::client_config("admin client", files)
            .map_err(|e| anyhow::anyhow!("--ca-cert: {}", e.reason))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .build();
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            key,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends a request; returns status and parsed JSON (Null for an empty body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let uri = format!("{}{}", self.base, path);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
            })
        };
        Ok((status, json))
    }

    /// [`Self::call`] for a CLI command: a transport failure or a non-2xx answer is
    /// reported on stderr (`error (<status>): <message>`) and becomes exit code 1.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), ExitCode> {
        let (status, resp) = match self.call(method, path, body).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Err(ExitCode::FAILURE);
            }
        };
        if !status.is_success() {
            let msg = resp
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| resp.to_string());
            eprintln!("error ({}): {msg}", status.as_u16());
            return Err(ExitCode::FAILURE);
        }
        Ok((status, resp))
    }
}
