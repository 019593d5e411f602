//! patgate: a reverse-proxy authentication gateway for Personal Access Tokens.
//!
//! # Layout
//! The modules follow a request's path through the gateway:
//! - [`config`]: YAML → raw structs → validated [`config::Settings`] (every problem with its path).
//! - [`token`]: the token format — generate, parse + checksum, SHA-256, display prefix. Pure.
//! - [`store`]: the [`store::TokenStore`] trait; Redis (standalone, Sentinel, Cluster) and
//!   embedded (redb) implementations; [`store::TokenView`], the compact form the cache keeps.
//! - [`cache`]: the token cache (a sharded, bounded table) in front of the store: positive/
//!   negative entries, coalesced misses, invalidation, stale serving while the store is down.
//! - [`auth`]: the decision pipeline — format → lookup → state → IP → route policy → rate limit.
//! - [`ratelimit`]: per-token limits — local (governor) or global (GCRA in Redis, with a
//!   local fallback) — and the `RateLimit-*` header values.
//! - [`quota`]: request quotas per UTC day or month, counted in the store.
//! - [`proxy`]: routing, header hygiene, forwarding with the pooled hyper client.
//! - [`admin`]: the admin API (SPEC §4) on its own listener, and the web console (`/ui/`).
//! - [`server`]: listeners, connection handling, graceful shutdown.
//! - [`error`]: the one place where a denial or failure becomes a response.
//! - [`cli`]: the `patgate` command line (the binary is a thin wrapper).
//! - [`dev`]: `patgate dev` — embedded store, echo upstream, a minted token.
//! - [`telemetry`]: tracing setup.
//! - [`lifecycle`]: token lifecycle operations (create … delete), invalidation, audit.
//! - [`usage`]: in-memory usage counts and client-IP prefixes (key-sharing signals),
//!   flushed to the store in batches.
//! - [`client_ip`]: the client IP behind trusted proxies.
//! - [`body`]: the body type and the streaming body-size limit.
//! - [`app`]: wiring, signals, drain.
//! - [`tls`]: TLS both ways (rustls): listener certificates reloaded on change, the
//!   client config for upstreams and the CLI.
//! - [`metrics`]: Prometheus metrics (`GET /metrics` on the admin listener).
//! - [`clock`]: coarse clocks (an atomic load) for the request path.
//! - [`assertion`]: the signed identity (Ed25519 JWS) for upstreams, and its JWKS.
//! - [`webhooks`]: token events, signed and delivered from a persistent outbox in the
//!   store, with retries.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod assertion;
pub mod auth;
pub mod body;
pub mod cache;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod dev;
pub mod error;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod usage;
pub mod webhooks;
