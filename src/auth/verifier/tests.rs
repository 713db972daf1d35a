//! Tokens minted here, with the test keys of `tests/keys/`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::auth::{CACHE_DELETE, CACHE_READ, CACHE_WRITE, METRICS_READ};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn path(name: &str) -> PathBuf {
    Path::new(KEYS).join(name)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn secret() -> Vec<u8> {
    std::fs::read(path("hs256.secret")).unwrap()
}

fn settings() -> AuthSettings {
    AuthSettings {
        hs256_secret_files: vec![(None, path("hs256.secret"))],
        public_key_files: vec![
            (Some("rsa-1".into()), path("rsa-public.pem")),
            (Some("ec-1".into()), path("ec-public.pem")),
            (Some("ed-1".into()), path("ed25519-public.pem")),
        ],
        issuer: Some("auth-service".into()),
        audience: Some("cache".into()),
    }
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "exp": now() + 600,
        "iss": "auth-service",
        "aud": "cache",
        "service_id": "character_service",
        "scope": "cache:read cache:write",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn hs(c: &serde_json::Value) -> Vec<u8> {
    encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(&secret()),
    )
    .unwrap()
    .into_bytes()
}

fn signed(alg: Algorithm, kid: &str, private: &str, c: &serde_json::Value) -> Vec<u8> {
    let pem = std::fs::read(path(private)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, c, &key).unwrap().into_bytes()
}

fn verifier() -> Verifier {
    Verifier::load(&settings()).unwrap()
}

#[test]
fn valid_tokens_of_every_algorithm_grant_their_scopes() {
    let v = verifier();
    assert_eq!(v.key_count(), 4);
    let c = claims(json!({}));
    for token in [
        hs(&c),
        signed(Algorithm::RS256, "rsa-1", "rsa-private.pem", &c),
        signed(Algorithm::ES256, "ec-1", "ec-private.pem", &c),
        signed(Algorithm::EdDSA, "ed-1", "ed25519-private.pem", &c),
    ] {
        let g = v.verify(&token, Some("character_service")).unwrap();
        assert_eq!(g.permissions, CACHE_READ | CACHE_WRITE);
        assert!(g.authenticated);
        assert_eq!(g.expires_us, (c["exp"].as_u64().unwrap() + LEEWAY_S) * 1_000_000);
    }
}

#[test]
fn roles_and_permissions_claims_add_up() {
    let v = verifier();
    let t = hs(&claims(
        json!({"scope": null, "roles": ["read"], "permissions": ["cache:delete"]}),
    ));
    assert_eq!(
        v.verify(&t, None).unwrap().permissions,
        CACHE_READ | METRICS_READ | CACHE_DELETE
    );
    let t = hs(&claims(json!({"scope": null})));
    assert_eq!(v.verify(&t, None).unwrap().permissions, 0);
}

#[test]
fn bad_tokens_are_refused_with_their_reason() {
    let v = verifier();
    let cases: Vec<(Vec<u8>, AuthError)> = vec![
        (b"".to_vec(), AuthError::Missing),
        (vec![b'a'; MAX_TOKEN_BYTES + 1], AuthError::TooLarge),
        (b"not.a.jwt".to_vec(), AuthError::Malformed),
        (hs(&claims(json!({"exp": now() - 120}))), AuthError::Expired),
        (hs(&claims(json!({"nbf": now() + 300}))), AuthError::NotYetValid),
        (hs(&claims(json!({"aud": "billing"}))), AuthError::Audience),
        (hs(&claims(json!({"iss": "mallory"}))), AuthError::Issuer),
        (
            hs(&claims(json!({"exp": null}))),
            AuthError::Claims("missing exp".into()),
        ),
        (
            hs(&claims(json!({"aud": null}))),
            AuthError::Claims("missing aud".into()),
        ),
        // Signed by another RSA key under a configured kid.
        (
            signed(Algorithm::RS256, "rsa-1", "rsa2-private.pem", &claims(json!({}))),
            AuthError::Signature,
        ),
        // A kid nobody configured.
        (
            signed(Algorithm::RS256, "rsa-9", "rsa-private.pem", &claims(json!({}))),
            AuthError::NoKey,
        ),
    ];
    for (token, want) in cases {
        assert_eq!(v.verify(&token, None), Err(want.clone()), "{want}");
    }
}

#[test]
fn a_wrong_hmac_secret_is_refused() {
    let other = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(&[7u8; 40]),
    )
    .unwrap();
    assert_eq!(
        verifier().verify(other.as_bytes(), None),
        Err(AuthError::Signature)
    );
}

#[test]
fn alg_none_is_refused() {
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    assert_eq!(
        verifier().verify(token.as_bytes(), None),
        Err(AuthError::Malformed)
    );
}

#[test]
fn hs_rs_confusion_is_refused() {
    // The classic attack: HMAC-sign with the server's RSA public key as the
    // secret, claiming the RSA key's kid or none.
    let public = std::fs::read(path("rsa-public.pem")).unwrap();
    let only_rsa = Verifier::load(&AuthSettings {
        public_key_files: vec![(None, path("rsa-public.pem"))],
        ..AuthSettings::default()
    })
    .unwrap();
    for kid in [None, Some("rsa-1".to_string())] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid;
        let token = encode(&header, &claims(json!({})), &EncodingKey::from_secret(&public)).unwrap();
        assert!(only_rsa.verify(token.as_bytes(), None).is_err());
        assert!(verifier().verify(token.as_bytes(), None).is_err());
    }
}

#[test]
fn service_id_must_match_the_connection() {
    let t = hs(&claims(json!({})));
    assert_eq!(
        verifier().verify(&t, Some("image_service")),
        Err(AuthError::ServiceMismatch)
    );
}

#[test]
fn short_secrets_and_wrong_files_refuse_to_load() {
    let dir = std::env::temp_dir().join(format!("dnd-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("short.secret");
    std::fs::write(&short, b"0123456789012345678901234567890\n").unwrap();
    let err = Verifier::load(&AuthSettings {
        hs256_secret_files: vec![(None, short)],
        ..AuthSettings::default()
    })
    .unwrap_err();
    assert!(err.contains("31 bytes"), "{err}");
    let err = Verifier::load(&AuthSettings {
        public_key_files: vec![(None, path("hs256.secret"))],
        ..AuthSettings::default()
    })
    .unwrap_err();
    assert!(err.contains("not an RSA"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn key_specs() {
    assert_eq!(
        parse_key_spec("k1=/etc/a.pem"),
        (Some("k1".into()), PathBuf::from("/etc/a.pem"))
    );
    assert_eq!(
        parse_key_spec("/etc/a=b.pem"),
        (None, PathBuf::from("/etc/a=b.pem"))
    );
    assert_eq!(parse_key_spec("a.pem"), (None, PathBuf::from("a.pem")));
}
