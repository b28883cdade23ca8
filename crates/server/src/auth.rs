//! Bearer tokens: each token names a tenant.

use crate::Error;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Status};

/// The tenant a request was authenticated as (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// Token → tenant.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, String>,
}

impl Tokens {
    /// Parses `TENANT=TOKEN` entries, one per line or separated by commas; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut by_token = HashMap::new();
        for (n, entry) in text.lines().flat_map(|l| l.split('#').next().unwrap_or("").split(',')).enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (tenant, token) = entry
                .split_once('=')
                .map(|(a, b)| (a.trim(), b.trim()))
                .filter(|(a, b)| !a.is_empty() && b.len() >= 8)
                .ok_or_else(|| {
                    Error::Tokens(format!("entry {} is not TENANT=TOKEN with a token of 8+ characters", n + 1))
                })?;
            // A token names one tenant: the same token given to two would let one act as the other.
            if let Some(other) = by_token.insert(token.to_string(), tenant.to_string()) {
                if other != tenant {
                    return Err(Error::Tokens(format!(
                        "entry {}: tenants {other} and {tenant} share a token; each tenant needs its own",
                        n + 1
                    )));
                }
            }
        }
        if by_token.is_empty() {
            return Err(Error::Tokens("no tokens given".into()));
        }
        Ok(Self { by_token })
    }

    /// Reads tokens from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Tokens(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    fn tenant(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }

    /// The tenant an `authorization` header value (`Bearer TOKEN`) authenticates, if any.
    pub(crate) fn authenticate(&self, header: Option<&str>) -> Result<&str, &'static str> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or("missing bearer token (authorization: Bearer TOKEN)")?;
        self.tenant(token).ok_or("invalid token")
    }
}

pub(crate) fn interceptor(
    tokens: Arc<Tokens>,
    metrics: Arc<crate::Metrics>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let refused = |msg: &'static str| {
            metrics.unauthenticated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::status::with_reason(Status::unauthenticated(msg), hangar_types::Reason::Unauthenticated)
        };
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let tenant = tokens.authenticate(header).map_err(refused)?.to_string();
        req.extensions_mut().insert(Tenant(tenant));
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::Tokens;

    #[test]
    fn a_token_names_one_tenant() {
        let t = Tokens::parse("a=token-aaaa\nb=token-bbbb").unwrap();
        assert_eq!(t.authenticate(Some("Bearer token-bbbb")), Ok("b"));
        assert!(t.authenticate(Some("Bearer token-cccc")).is_err());
        assert!(t.authenticate(Some("token-aaaa")).is_err(), "the Bearer scheme is required");
        assert!(t.authenticate(None).is_err());
        let shared = Tokens::parse("a=same-token,b=same-token").unwrap_err().to_string();
        assert!(shared.contains("tenants a and b share a token"), "{shared}");
        assert!(Tokens::parse("a=same-token,a=same-token").is_ok(), "a repeated line is harmless");
    }
}
