//! Stage 4: the per-token IP allowlist (`ipAllowlist`; empty = any address).

use std::net::IpAddr;

use super::Deny;
use crate::client_ip;
use crate::store::TokenView;

/// `client_ip` must fall inside one of the token's CIDRs when it has any.
pub fn check(token: &TokenView, client_ip: IpAddr) -> Result<(), Deny> {
    let allowlist = token.ip_allowlist();
    if allowlist.is_empty() || client_ip::contains(allowlist, client_ip) {
        Ok(())
    } else {
        Err(Deny::IpNotAllowed)
    }
}
