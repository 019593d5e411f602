//! Stage 4: the per-token IP allowlist (`ipAllowlist`; empty = any address).

use std::net::IpAddr;

use super::Deny;
use crate::client_ip;
use crate::store::TokenRecord;

/// `client_ip` must fall inside one of the token's CIDRs when it has any.
pub fn check(record: &TokenRecord, client_ip: IpAddr) -> Result<(), Deny> {
    if record.ip_allowlist.is_empty() || client_ip::contains(&record.ip_allowlist, client_ip) {
        Ok(())
    } else {
        Err(Deny::IpNotAllowed)
    }
}
