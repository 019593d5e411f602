//! Stage 5: the route's policy — required scopes and permissions (with
//! `permissions_by_method`), then project/org binding from path segments.

use http::Method;

use super::Deny;
use crate::config::{PathParam, Route};
use crate::store::TokenView;

/// Checks `token` against `route` for a request `method path`.
pub fn check(token: &TokenView, route: &Route, method: &Method, path: &str) -> Result<(), Deny> {
    for scope in &route.require_scopes {
        if !token.has_scope(scope) {
            return Err(Deny::MissingScope(scope.clone()));
        }
    }
    for perm in &route.require_permissions {
        if !token.has_permission(perm) {
            return Err(Deny::MissingPermission(perm.clone()));
        }
    }
    if route.permissions_by_method {
        let need = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            "read"
        } else {
            "write"
        };
        if !token.has_permission(need) {
            return Err(Deny::MissingPermission(need.to_string()));
        }
    }
    if let (Some(param), Some(project)) = (&route.project_param, token.project_id())
        && let Some(seg) = segment(param, path)
        && seg != project
    {
        return Err(Deny::WrongProject);
    }
    if let (Some(param), Some(org)) = (&route.org_param, token.org_id())
        && let Some(seg) = segment(param, path)
        && seg != org
    {
        return Err(Deny::WrongProject);
    }
    Ok(())
}

/// The path segment `param` designates in `path`, if the path has it.
pub fn segment<'p>(param: &PathParam, path: &'p str) -> Option<&'p str> {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    match param {
        PathParam::Template { segments } => {
            let mut found = None;
            for want in segments {
                let have = segs.next()?;
                match want {
                    Some(lit) if lit != have => return None,
                    Some(_) => {}
                    None => found = Some(have),
                }
            }
            found
        }
        PathParam::After(name) => {
            while let Some(s) = segs.next() {
                if s == name {
                    return segs.next();
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_after_segments() {
        let t = PathParam::Template {
            segments: vec![Some("v1".into()), Some("projects".into()), None],
        };
        assert_eq!(segment(&t, "/v1/projects/p1/docs"), Some("p1"));
        assert_eq!(segment(&t, "/v1/projects"), None);
        assert_eq!(segment(&t, "/v2/projects/p1"), None);
        let a = PathParam::After("orgs".into());
        assert_eq!(segment(&a, "/api/orgs/o9/x"), Some("o9"));
        assert_eq!(segment(&a, "/api/orgs"), None);
        assert_eq!(segment(&a, "/api/users/1"), None);
    }
}
