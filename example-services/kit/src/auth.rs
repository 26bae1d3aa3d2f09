//! Who is calling. Every request to a reference service names its caller with a credential the service
//! checks itself, so that the service is safe even when reached around the gateway:
//!
//! - a user's token: the JWT the client sent the gateway, which the gateway passes on and the service
//!   verifies again with the same key, issuer and audience (HS256 in the demo). `sub` is the user id;
//!   `scope` (space-separated) or `scp` the scopes, `admin` among them for administrators;
//! - the deployment's service token (`SERVICE_TOKEN`), for calls between services (orders reserving
//!   stock at products), compared in constant time.
//!
//! No credential is no caller: a handler that needs one answers `401` (with `WWW-Authenticate`), one
//! that does not (reading the catalogue) takes an `Option<Caller>`. An identity header such as
//! `X-User-Id` is never believed: anyone who reaches the port could send one.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::ApiError;

/// `--jwt-secret`, `--jwt-issuer`, `--jwt-audience`, `--service-token`: the same flags (and
/// environment variables) in every service.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// The key the gateway verifies tokens with (HS256; at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// The `iss` tokens must carry.
    #[arg(long, env = "JWT_ISSUER", default_value = "tollgate-demo")]
    pub jwt_issuer: String,
    /// The `aud` tokens must carry.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "tollgate-api")]
    pub jwt_audience: String,
    /// The credential services call each other with (at least 32 bytes). Without it, no call is a
    /// service's.
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
}

/// The verifier, shared by the handlers (an axum extension).
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    service_token: Option<Vec<u8>>,
}

impl Auth {
    pub fn new(a: &AuthArgs) -> anyhow::Result<Auth> {
        if a.jwt_secret.len() < 32 {
            anyhow::bail!("JWT_SECRET must be at least 32 bytes");
        }
        if a.service_token.as_ref().is_some_and(|t| t.len() < 32) {
            anyhow::bail!("SERVICE_TOKEN must be at least 32 bytes");
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&a.jwt_issuer]);
        validation.set_audience(&[&a.jwt_audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = 30;
        Ok(Auth {
            key: DecodingKey::from_secret(a.jwt_secret.as_bytes()),
            validation,
            service_token: a.service_token.as_ref().map(|t| t.as_bytes().to_vec()),
        })
    }

    /// Who `bearer` is, or why not.
    pub fn caller(&self, bearer: &str) -> Result<Caller, ApiError> {
        if let Some(t) = &self.service_token {
            if bool::from(bearer.as_bytes().ct_eq(t)) {
                return Ok(Caller::Service);
            }
        }
        let data =
            jsonwebtoken::decode::<serde_json::Value>(bearer, &self.key, &self.validation)
                .map_err(|_| unauthenticated("invalid_token", "the token is invalid or expired"))?;
        let claims = data.claims;
        let id = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                unauthenticated("invalid_token", "the token's `sub` is not a user id")
            })?;
        let mut scopes: Vec<String> = Vec::new();
        if let Some(s) = claims.get("scope").and_then(|s| s.as_str()) {
            scopes.extend(s.split_whitespace().map(str::to_string));
        }
        match claims.get("scp") {
            Some(serde_json::Value::String(s)) => {
                scopes.extend(s.split_whitespace().map(str::to_string))
            }
            Some(serde_json::Value::Array(a)) => {
                scopes.extend(a.iter().filter_map(|v| v.as_str()).map(str::to_string))
            }
            _ => {}
        }
        Ok(Caller::User { id, scopes })
    }
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user, by id, with the scopes of their token.
    User { id: i64, scopes: Vec<String> },
    /// Another service of this deployment.
    Service,
}

impl Caller {
    /// An administrator or a service: may act on anyone's records.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Service => true,
            Caller::User { scopes, .. } => scopes.iter().any(|s| s == "admin"),
        }
    }

    /// The user, unless it is a service.
    pub fn user_id(&self) -> Option<i64> {
        match self {
            Caller::User { id, .. } => Some(*id),
            Caller::Service => None,
        }
    }

    /// May act on the records of user `id`: themselves, or an administrator.
    pub fn may_act_for(&self, id: i64) -> bool {
        self.is_admin() || self.user_id() == Some(id)
    }

    /// `Ok` when [`Caller::may_act_for`] `id`, else `403`.
    pub fn require_self_or_admin(&self, id: i64) -> Result<(), ApiError> {
        if self.may_act_for(id) {
            Ok(())
        } else {
            Err(forbidden("this belongs to another user"))
        }
    }

    /// `Ok` for an administrator or a service, else `403`.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(forbidden("this needs the `admin` scope"))
        }
    }

    /// `Ok` for another service, else `403`.
    pub fn require_service(&self) -> Result<(), ApiError> {
        match self {
            Caller::Service => Ok(()),
            Caller::User { .. } => Err(forbidden("only services of this deployment may call this")),
        }
    }
}

/// `401` (its `WWW-Authenticate` is added by `ApiError`'s response).
fn unauthenticated(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The bearer credential of a request: `None` without an `Authorization` header, an error for one
/// that is not `Bearer ...`.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| unauthenticated("invalid_token", "the Authorization header is not text"))?;
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(unauthenticated(
            "invalid_token",
            "the Authorization header is not `Bearer TOKEN`",
        )),
    }
}

fn verifier(parts: &Parts) -> Result<Arc<Auth>, ApiError> {
    parts
        .extensions
        .get::<Arc<Auth>>()
        .cloned()
        .ok_or_else(ApiError::internal)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        let auth = verifier(parts)?;
        match bearer(parts)? {
            Some(t) => auth.caller(t),
            None => Err(unauthenticated(
                "unauthenticated",
                "a bearer token is required",
            )),
        }
    }
}

/// An optional caller: `None` without credentials; a credential that does not verify is still `401`.
pub struct MaybeCaller(pub Option<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<MaybeCaller, ApiError> {
        let auth = verifier(parts)?;
        match bearer(parts)? {
            Some(t) => auth.caller(t).map(|c| MaybeCaller(Some(c))),
            None => Ok(MaybeCaller(None)),
        }
    }
}

/// `router` with `auth` available to its handlers.
pub fn with_auth(router: axum::Router, auth: Auth) -> axum::Router {
    router.layer(axum::Extension(Arc::new(auth)))
}
