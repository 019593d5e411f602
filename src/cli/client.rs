//! A minimal admin-API client for the CLI (hyper-util, plain HTTP).

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A client bound to one admin URL and key.
pub struct AdminClient {
    base: String,
    key: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// `base` like `http://127.0.0.1:9091`.
    pub fn new(base: &str, key: String) -> Self {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            key,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
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
}
