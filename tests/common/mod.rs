//! Shared integration-test helpers. One submodule per concern; each test binary uses
//! what it needs (hence `dead_code` is allowed).
#![allow(dead_code)]

pub mod redis;
