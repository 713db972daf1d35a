//! JWT validation: key files → keys with their one algorithm each, and a
//! token → [`Grant`].
//!
//! Rules (docs/security.md):
//! - Only the algorithms of the configured keys are accepted, each key with
//!   its own (HS256 for the secret; RS256, ES256 or EdDSA from the PEM key
//!   type). jsonwebtoken has no `none`, and a key only verifies its own
//!   family, so an RS256 public key can never be used as an HMAC secret.
//! - `kid` selects the key: a token with a `kid` is checked only against the
//!   key configured with that id, a token without one only against keys
//!   configured without one.
//! - `exp` is required; `nbf` is checked when present; `iss` and `aud` are
//!   required and checked when configured; leeway [`LEEWAY_S`].
//! - Tokens larger than [`MAX_TOKEN_BYTES`] are refused unparsed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use zeroize::Zeroize;

use super::{permission_bits, role_bits, Grant, Permissions};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_S: u64 = 30;

/// Shortest HS256 secret accepted, in bytes (RFC 7518 3.2: at least the
/// hash size).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Where the keys come from; kept to re-read them on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// `--auth-hs256-secret-file [KID=]PATH`.
    pub hs256_secret_files: Vec<(Option<String>, PathBuf)>,
    /// `--auth-public-key-file [KID=]PATH`, repeatable.
    pub public_key_files: Vec<(Option<String>, PathBuf)>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl AuthSettings {
    /// Whether any key is configured (auth on).
    pub fn enabled(&self) -> bool {
        !self.hs256_secret_files.is_empty() || !self.public_key_files.is_empty()
    }
}

/// Parses `[KID=]PATH`.
pub fn parse_key_spec(spec: &str) -> (Option<String>, PathBuf) {
    match spec.split_once('=') {
        Some((kid, path)) if !kid.is_empty() && !kid.contains('/') => {
            (Some(kid.to_string()), PathBuf::from(path))
        }
        _ => (None, PathBuf::from(spec)),
    }
}

/// Why a token was refused (AUTH_001).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token given")]
    Missing,
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("not a JWT")]
    Malformed,
    #[error("no key for this token's kid and alg")]
    NoKey,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issuer not accepted")]
    Issuer,
    #[error("token audience not accepted")]
    Audience,
    #[error("token signature invalid")]
    Signature,
    #[error("token claims invalid: {0}")]
    Claims(String),
    #[error("token service_id does not match the connection's service_id")]
    ServiceMismatch,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// The keys and rules tokens are checked with. Immutable: a reload builds
/// a new one.
pub struct Verifier {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<_> = self.keys.iter().map(|k| (&k.kid, k.alg)).collect();
        f.debug_struct("Verifier").field("keys", &keys).finish()
    }
}

/// Claims we read. Names may come as a JSON array or a space-separated
/// string (OAuth `scope` style).
#[derive(Deserialize)]
struct Claims {
    /// Required (jsonwebtoken checks); optional here so that its absence is
    /// reported as such rather than as bad JSON.
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    service_id: Option<String>,
    #[serde(default)]
    roles: Names,
    #[serde(default)]
    permissions: Names,
    #[serde(default)]
    scope: Names,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Names {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn bits(&self, of: fn(&str) -> Permissions) -> Permissions {
        match self {
            Names::None => 0,
            Names::One(s) => s.split_ascii_whitespace().fold(0, |acc, n| acc | of(n)),
            Names::Many(v) => v.iter().fold(0, |acc, n| acc | of(n)),
        }
    }
}

impl Verifier {
    /// No keys: every token is refused (used when auth is off).
    pub fn empty() -> Verifier {
        Verifier { keys: Vec::new() }
    }

    /// Reads every key file of `settings`.
    pub fn load(settings: &AuthSettings) -> Result<Verifier, String> {
        let mut keys = Vec::new();
        for (kid, path) in &settings.hs256_secret_files {
            let key = load_hs256_secret(path)?;
            keys.push(Key {
                kid: kid.clone(),
                alg: Algorithm::HS256,
                key,
                validation: validation(Algorithm::HS256, settings),
            });
        }
        for (kid, path) in &settings.public_key_files {
            let (alg, key) = load_public_key(path)?;
            keys.push(Key {
                kid: kid.clone(),
                alg,
                key,
                validation: validation(alg, settings),
            });
        }
        let mut seen = HashSet::new();
        for k in &keys {
            if !seen.insert(k.kid.as_deref()) && k.kid.is_some() {
                return Err(format!(
                    "two keys have kid {:?}",
                    k.kid.as_deref().unwrap_or_default()
                ));
            }
        }
        Ok(Verifier { keys })
    }

    /// One HS256 key without a kid, from bytes (fuzzing and tests).
    pub fn with_hs256_secret(secret: &[u8], settings: &AuthSettings) -> Verifier {
        Verifier {
            keys: vec![Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
                validation: validation(Algorithm::HS256, settings),
            }],
        }
    }

    /// Number of keys.
    #[cfg(test)]
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// `(kid, algorithm)` of each key, for the reload report.
    pub fn describe(&self) -> Vec<(Option<String>, String)> {
        self.keys
            .iter()
            .map(|k| (k.kid.clone(), format!("{:?}", k.alg)))
            .collect()
    }

    /// Checks a token; on success, what it grants. `service_id`, when
    /// given, must equal the token's `service_id` claim if it has one.
    pub fn verify(&self, token: &[u8], service_id: Option<&str>) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut last = AuthError::NoKey;
        for key in self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg && k.kid == header.kid)
        {
            match decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return grant_of(&data.claims, service_id),
                Err(e) => last = classify(e),
            }
        }
        Err(last)
    }
}

fn grant_of(claims: &Claims, service_id: Option<&str>) -> Result<Grant, AuthError> {
    if let (Some(claimed), Some(given)) = (claims.service_id.as_deref(), service_id) {
        if claimed != given {
            return Err(AuthError::ServiceMismatch);
        }
    }
    let exp = claims
        .exp
        .ok_or_else(|| AuthError::Claims("missing exp".into()))?;
    let permissions = claims.permissions.bits(permission_bits)
        | claims.scope.bits(permission_bits)
        | claims.roles.bits(role_bits);
    Ok(Grant {
        permissions,
        expires_us: exp.saturating_add(LEEWAY_S).saturating_mul(1_000_000),
        authenticated: true,
    })
}

fn classify(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            AuthError::Signature
        }
        ErrorKind::MissingRequiredClaim(c) => AuthError::Claims(format!("missing {c}")),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) | ErrorKind::InvalidToken => {
            AuthError::Malformed
        }
        other => AuthError::Claims(format!("{other:?}")),
    }
}

fn validation(alg: Algorithm, settings: &AuthSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = LEEWAY_S;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match &settings.issuer {
        Some(iss) => {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        None => v.iss = None,
    }
    match &settings.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn load_hs256_secret(path: &Path) -> Result<DecodingKey, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("reading HS256 secret {}: {e}", path.display()))?;
    // Editors add a final newline; it is not part of the secret.
    let mut len = bytes.len();
    while len > 0 && matches!(bytes[len - 1], b'\n' | b'\r') {
        len -= 1;
    }
    if len < MIN_HS256_SECRET_BYTES {
        bytes.zeroize();
        return Err(format!(
            "HS256 secret {} is {len} bytes; at least {MIN_HS256_SECRET_BYTES} are required",
            path.display()
        ));
    }
    let key = DecodingKey::from_secret(&bytes[..len]);
    bytes.zeroize();
    Ok(key)
}

/// A PEM public key and the one algorithm its type implies.
fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading public key {}: {e}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((Algorithm::ES256, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((Algorithm::EdDSA, key));
    }
    Err(format!(
        "{} is not an RSA, EC P-256 or Ed25519 public key in PEM",
        path.display()
    ))
}

#[cfg(test)]
mod tests;
