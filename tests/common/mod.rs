//! Shared integration-test helpers. One submodule per concern; each test binary uses
//! what it needs (hence `dead_code` is allowed).
#![allow(dead_code)]

pub mod admin;
pub mod dev;
pub mod gateway;
pub mod pki;
pub mod recorder;
pub mod redis;
pub mod secrets;
pub mod upstream;
