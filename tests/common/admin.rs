//! Admin-API helpers for tests (reqwest against the real listener).

use serde_json::Value;

use super::gateway::ADMIN_KEY;
use super::secrets;

/// A client for one admin URL.
#[derive(Clone)]
pub struct AdminApi {
    /// Base URL.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl AdminApi {
    /// For `base` with the test admin key.
    pub fn new(base: &str) -> Self {
        secrets::register(ADMIN_KEY);
        AdminApi {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Any call; returns status and JSON (Null when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if let Some(t) = json.get("token").and_then(Value::as_str) {
            secrets::register(t);
        }
        (status, json)
    }

    /// Creates a token; panics unless 201. Returns (raw token, record).
    pub async fn create(&self, body: Value) -> (String, Value) {
        let (status, json) = self
            .call(reqwest::Method::POST, "/v1/tokens", Some(body))
            .await;
        assert_eq!(status, 201, "create failed: {json}");
        (
            json["token"].as_str().unwrap().to_string(),
            json["record"].clone(),
        )
    }

    /// POST without body.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, None).await
    }
}
