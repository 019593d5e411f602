//! Who may do what on the admin API.
//!
//! - An admin key may do everything.
//! - A PAT holding `tokens:admin` manages every token of its organisation (its
//!   `orgId`; a PAT without one manages nothing).
//! - A PAT holding `tokens:self` manages only tokens with its own `ownerId`, and can
//!   never hand out more permissions or scopes than it holds itself.
//! - Owner disable/enable, import and the audit trail need an admin key.
//!
//! Each rule is a plain function over the caller and the record or input, so the
//! handlers call one function per operation and the rules are tested here.

use std::sync::Arc;

use crate::lifecycle::{Actor, NewToken, TokenPatch};
use crate::store::{ListQuery, TokenRecord, TokenView};

/// Permission that lets a PAT manage its organisation's tokens.
pub const TOKENS_ADMIN: &str = "tokens:admin";
/// Permission that lets a PAT manage its owner's tokens.
pub const TOKENS_SELF: &str = "tokens:self";

/// An authenticated admin-API caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// An admin key, by name.
    AdminKey(String),
    /// A PAT with `tokens:admin` (org-wide) or `tokens:self` (own tokens).
    Pat {
        /// The caller's token, as the cache holds it (what the rules read: id,
        /// owner, org, permissions, scopes).
        token: Arc<TokenView>,
        /// Whether it holds `tokens:admin` (else it holds `tokens:self`).
        org_admin: bool,
    },
}

/// Refused: the message names what was missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

fn forbid(msg: impl Into<String>) -> Forbidden {
    Forbidden(msg.into())
}

impl Principal {
    /// The actor recorded in audit events.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::AdminKey(name) => Actor::Admin(name.clone()),
            Principal::Pat { token, .. } => Actor::Token(token.id().to_string()),
        }
    }

    /// Operations only admin keys may perform.
    pub fn require_admin_key(&self, what: &str) -> Result<(), Forbidden> {
        match self {
            Principal::AdminKey(_) => Ok(()),
            Principal::Pat { .. } => Err(forbid(format!("{what} requires an admin key"))),
        }
    }

    /// May this caller see and change `target`?
    pub fn may_manage(&self, target: &TokenRecord) -> Result<(), Forbidden> {
        match self {
            Principal::AdminKey(_) => Ok(()),
            Principal::Pat {
                token,
                org_admin: true,
            } => match token.org_id() {
                Some(org) if target.org_id.as_deref() == Some(org) => Ok(()),
                _ => Err(forbid("This token belongs to another organization")),
            },
            Principal::Pat {
                token,
                org_admin: false,
            } => {
                if target.owner_id == token.owner_id() {
                    Ok(())
                } else {
                    Err(forbid("This token belongs to another owner"))
                }
            }
        }
    }

    /// Restricts a listing to what the caller may see.
    pub fn scope_list(&self, q: &mut ListQuery) -> Result<(), Forbidden> {
        match self {
            Principal::AdminKey(_) => Ok(()),
            Principal::Pat {
                token,
                org_admin: true,
            } => {
                let Some(org) = token.org_id() else {
                    return Err(forbid(
                        "A tokens:admin PAT without an orgId manages no tokens",
                    ));
                };
                if q.org_id.as_ref().is_some_and(|o| o != org) {
                    return Err(forbid("This organization's tokens are not yours to list"));
                }
                q.org_id = Some(org.to_string());
                Ok(())
            }
            Principal::Pat {
                token,
                org_admin: false,
            } => {
                if q.owner_id.as_ref().is_some_and(|o| o != token.owner_id()) {
                    return Err(forbid("Another owner's tokens are not yours to list"));
                }
                q.owner_id = Some(token.owner_id().to_string());
                Ok(())
            }
        }
    }

    /// Fills in and checks a creation request.
    pub fn check_create(&self, new: &mut NewToken) -> Result<(), Forbidden> {
        let (token, org_admin) = match self {
            Principal::AdminKey(_) => return Ok(()),
            Principal::Pat { token, org_admin } => (token, *org_admin),
        };
        if org_admin {
            let Some(org) = token.org_id() else {
                return Err(forbid(
                    "A tokens:admin PAT without an orgId manages no tokens",
                ));
            };
            match &new.org_id {
                None => new.org_id = Some(org.to_string()),
                Some(o) if o == org => {}
                Some(_) => return Err(forbid("Tokens can only be created in your organization")),
            }
        } else {
            if new.owner_id.is_empty() {
                new.owner_id = token.owner_id().to_string();
            }
            if new.owner_id != token.owner_id() {
                return Err(forbid(
                    "A tokens:self PAT can only create tokens for its own owner",
                ));
            }
            if new.org_id.is_none() {
                new.org_id = token.org_id().map(str::to_string);
            }
            if new.org_id.as_deref() != token.org_id() {
                return Err(forbid(
                    "A tokens:self PAT can only create tokens in its own organization",
                ));
            }
            no_escalation(token, &new.permissions, &new.scopes)?;
        }
        Ok(())
    }

    /// Checks an update of `target` (ownership is checked separately).
    pub fn check_patch(&self, patch: &TokenPatch) -> Result<(), Forbidden> {
        match self {
            Principal::Pat {
                token,
                org_admin: false,
            } => no_escalation(
                token,
                patch.permissions.as_deref().unwrap_or(&[]),
                patch.scopes.as_deref().unwrap_or(&[]),
            ),
            _ => Ok(()),
        }
    }
}

/// `permissions` and `scopes` must be subsets of what `caller` holds.
fn no_escalation(
    caller: &TokenView,
    permissions: &[String],
    scopes: &[String],
) -> Result<(), Forbidden> {
    if let Some(p) = permissions.iter().find(|p| !caller.has_permission(p)) {
        return Err(forbid(format!(
            "Cannot grant permission {p}: the calling PAT does not hold it"
        )));
    }
    if let Some(s) = scopes.iter().find(|s| !caller.has_scope(s)) {
        return Err(forbid(format!(
            "Cannot grant scope {s}: the calling PAT does not hold it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Lookup, TokenType};

    fn rec(owner: &str, org: Option<&str>, perms: &[&str], scopes: &[&str]) -> TokenRecord {
        TokenRecord {
            id: format!("id-{owner}"),
            name: "n".into(),
            description: String::new(),
            prefix: "pat_x".into(),
            kind: TokenType::User,
            owner_id: owner.into(),
            org_id: org.map(str::to_string),
            project_id: None,
            permissions: perms.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            created_at: jiff::Timestamp::now(),
            created_by: String::new(),
            expires_at: None,
            is_active: true,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            ip_allowlist: vec![],
            rate_limit: None,
            metadata: Default::default(),
        }
    }

    fn pat(r: TokenRecord, org_admin: bool) -> Principal {
        Principal::Pat {
            token: Arc::new(TokenView::new(Lookup {
                record: r,
                grace_until: None,
            })),
            org_admin,
        }
    }

    #[test]
    fn admin_keys_may_do_everything() {
        let p = Principal::AdminKey("ops".into());
        assert!(p.may_manage(&rec("x", Some("o"), &[], &[])).is_ok());
        assert!(p.require_admin_key("audit").is_ok());
        let mut q = ListQuery::default();
        p.scope_list(&mut q).unwrap();
        assert_eq!(q, ListQuery::default());
    }

    #[test]
    fn org_admin_manages_only_its_org() {
        let p = pat(rec("a", Some("o1"), &[TOKENS_ADMIN], &[]), true);
        assert!(p.may_manage(&rec("b", Some("o1"), &[], &[])).is_ok());
        assert!(p.may_manage(&rec("b", Some("o2"), &[], &[])).is_err());
        assert!(p.may_manage(&rec("b", None, &[], &[])).is_err());
        let mut q = ListQuery::default();
        p.scope_list(&mut q).unwrap();
        assert_eq!(q.org_id.as_deref(), Some("o1"));
        let mut q = ListQuery {
            org_id: Some("o2".into()),
            ..Default::default()
        };
        assert!(p.scope_list(&mut q).is_err());
        let mut new = NewToken {
            owner_id: "z".into(),
            ..Default::default()
        };
        p.check_create(&mut new).unwrap();
        assert_eq!(new.org_id.as_deref(), Some("o1"));
        let mut new = NewToken {
            owner_id: "z".into(),
            org_id: Some("o2".into()),
            ..Default::default()
        };
        assert!(p.check_create(&mut new).is_err());
        assert!(p.require_admin_key("Disabling an owner").is_err());
        let orgless = pat(rec("a", None, &[TOKENS_ADMIN], &[]), true);
        assert!(orgless.may_manage(&rec("a", None, &[], &[])).is_err());
    }

    #[test]
    fn self_service_manages_own_tokens_without_escalation() {
        let p = pat(
            rec("me", Some("o1"), &[TOKENS_SELF, "read"], &["docs"]),
            false,
        );
        assert!(p.may_manage(&rec("me", None, &[], &[])).is_ok());
        assert!(p.may_manage(&rec("you", Some("o1"), &[], &[])).is_err());
        let mut q = ListQuery::default();
        p.scope_list(&mut q).unwrap();
        assert_eq!(q.owner_id.as_deref(), Some("me"));
        let mut ok = NewToken {
            permissions: vec!["read".into()],
            scopes: vec!["docs".into()],
            ..Default::default()
        };
        p.check_create(&mut ok).unwrap();
        assert_eq!(ok.owner_id, "me");
        let mut other = NewToken {
            owner_id: "you".into(),
            ..Default::default()
        };
        assert!(p.check_create(&mut other).is_err());
        let mut more = NewToken {
            permissions: vec!["write".into()],
            ..Default::default()
        };
        assert_eq!(
            p.check_create(&mut more).unwrap_err().0,
            "Cannot grant permission write: the calling PAT does not hold it"
        );
        let mut scope = NewToken {
            scopes: vec!["billing".into()],
            ..Default::default()
        };
        assert!(p.check_create(&mut scope).is_err());
        let patch = TokenPatch {
            permissions: Some(vec!["admin".into()]),
            ..Default::default()
        };
        assert!(p.check_patch(&patch).is_err());
        let patch = TokenPatch {
            name: Some("x".into()),
            ..Default::default()
        };
        assert!(p.check_patch(&patch).is_ok());
    }
}
