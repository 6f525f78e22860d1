//! What a request presents to prove who it is, read once for every protocol: the
//! `Authorization` header, the cookies and the query string ([`Credentials`], an axum
//! extractor that never fails). Each protocol then applies its own rule to it (which
//! schemes it accepts, whether a cookie or `?tk=` counts, what the refusal looks like)
//! and compares the token with [`ServerState::token_matches`](super::ServerState).

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Uri};

/// The credentials a request carries.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The `Authorization` header, trimmed (`Some("")` when it is not text).
    authorization: Option<String>,
    /// Every `name=value` of every `Cookie` header, in order.
    cookies: Vec<(String, String)>,
    /// The raw query string.
    query: Option<String>,
}

// Tokens must never reach logs or Debug output.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .field("cookies", &self.cookies.len())
            .finish()
    }
}

impl Credentials {
    /// Read the credentials of a request from its headers and URI.
    pub fn new(headers: &HeaderMap, uri: &Uri) -> Credentials {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or_default().trim().to_string());
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        Credentials {
            authorization,
            cookies,
            query: uri.query().map(str::to_string),
        }
    }

    /// The `Authorization` header, when one was sent.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    /// The token after the first of `schemes` (each written with its trailing space,
    /// matched case-sensitively) that the `Authorization` header starts with.
    pub fn scheme_token(&self, schemes: &[&str]) -> Option<&str> {
        let v = self.authorization()?;
        schemes
            .iter()
            .find_map(|s| v.strip_prefix(s))
            .map(str::trim)
    }

    /// The common rule: `Bearer <token>` (or `bearer`), or the bare token.
    pub fn bearer_or_bare(&self) -> Option<&str> {
        let v = self.authorization()?;
        Some(self.scheme_token(&["Bearer ", "bearer "]).unwrap_or(v))
    }

    /// The value of cookie `name` (the first one sent).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The (decoded) value of query parameter `name` (the first one).
    pub fn query(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_deref()?.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Credentials::new(&parts.headers, &parts.uri))
    }
}
