//! Who may use the control plane: callers authenticate with `authorization: Bearer <token>`,
//! checked against the `--tokens` file (one `<token> <node>` pair per line; see [`super::ca`]
//! for the format), re-read when it changes. The same source serves both services: the CA
//! (which then limits a node to the identities scheduled on it) and delta ADS (which serves
//! the whole mesh to any authenticated node, as istiod does for ztunnel).
//!
//! Fail closed: without a tokens file nobody authenticates — the CA refuses every request and
//! so does ADS, unless `--dangerous-unauthenticated-xds` opts ADS out (a lab on a trusted
//! network, or ztunnel clients without tokens). A missing or unknown token is
//! `UNAUTHENTICATED`, before anything is served.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tonic::Status;

use super::reload::Reloading;

/// Token → node.
pub(crate) type TokenMap = HashMap<String, Arc<str>>;

/// The authenticated callers: the `--tokens` file, reloaded when it changes.
pub struct Tokens {
    file: Option<Reloading<TokenMap>>,
}

/// Why a caller is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// No `authorization: Bearer` header.
    #[error("missing bearer token")]
    NoToken,
    /// The token is not in the tokens file (or there is none).
    #[error("unknown bearer token")]
    UnknownToken,
}

impl Unauthenticated {
    /// The gRPC status a refused caller receives.
    pub fn status(self) -> Status {
        Status::unauthenticated(self.to_string())
    }
}

impl Tokens {
    /// Reads the tokens file (it must be readable and well formed at start); `None`: nobody
    /// authenticates.
    pub fn load(path: Option<&Path>) -> Result<Tokens, String> {
        let Some(path) = path else {
            return Ok(Tokens { file: None });
        };
        let initial = read_tokens(path)?;
        let p = path.to_path_buf();
        Ok(Tokens {
            file: Some(Reloading::new(
                vec![path.to_path_buf()],
                initial,
                Box::new(move || read_tokens(&p)),
            )),
        })
    }

    /// Whether there is a tokens file at all.
    pub fn configured(&self) -> bool {
        self.file.is_some()
    }

    /// The node whose token is in `authorization` (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<str>, Unauthenticated> {
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Unauthenticated::NoToken)?;
        let tokens = self
            .file
            .as_ref()
            .ok_or(Unauthenticated::UnknownToken)?
            .get();
        tokens
            .get(token)
            .cloned()
            .ok_or(Unauthenticated::UnknownToken)
    }

    /// [`Tokens::authenticate`] with a request's `authorization` header.
    pub fn authenticate_request(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<str>, Unauthenticated> {
        self.authenticate(
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
    }
}

/// `<token> <node>` lines; see the format in [`super::ca`].
pub(crate) fn read_tokens(path: &Path) -> Result<TokenMap, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut tokens = TokenMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(token), Some(node), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: expected `<token> <node>`", n + 1));
        };
        if tokens.insert(token.to_string(), node.into()).is_some() {
            return Err(format!("line {}: duplicate token", n + 1));
        }
    }
    Ok(tokens)
}
