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
            by_token.insert(token.to_string(), tenant.to_string());
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
}

pub(crate) fn interceptor(
    tokens: Arc<Tokens>,
    metrics: Arc<crate::Metrics>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut req: Request<()>| {
        let refused = |msg: &'static str| {
            metrics.unauthenticated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::status::with_reason(Status::unauthenticated(msg), "UNAUTHENTICATED")
        };
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| refused("missing bearer token (authorization: Bearer TOKEN)"))?;
        let tenant = tokens.tenant(token).ok_or_else(|| refused("invalid token"))?.to_string();
        req.extensions_mut().insert(Tenant(tenant));
        Ok(req)
    }
}
