//! Owner bearer tokens: JWTs signed HS256 with the server's JWT secret, carrying
//! `{sub, userId, email, iat, exp, jti}` (`userId` and `email` are the original's claims).
//!
//! Hand-rolled on the `hmac`, `sha2` and `base64` crates already in the tree rather than
//! `jsonwebtoken`: we need exactly one algorithm, and a fixed one is safer than a library that
//! dispatches on the token's own `alg` header; jsonwebtoken 10+ also panics at first use unless a
//! crypto-backend feature is chosen (a pitfall in the team's shared toolchain notes), and would add
//! a second HMAC implementation.
//! The whole format is ~60 lines and tested below. The signature is checked in constant time
//! (`Mac::verify_slice`) before any claim is trusted.
//!
//! Tokens are stateless; logout revokes one by its `jti` (table `revoked_tokens`), which callers
//! check after [`verify`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// `{"alg":"HS256","typ":"JWT"}`, the only header issued or accepted.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The owner's id.
    pub sub: Uuid,
    /// The owner's id again, under the original's claim name.
    #[serde(rename = "userId")]
    pub user_id: Uuid,
    /// The owner's email when the token was issued.
    pub email: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds); the token is refused from this instant on.
    pub exp: i64,
    /// Token id, what logout revokes.
    pub jti: Uuid,
}

impl Claims {
    /// The expiry as an instant.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON, or another algorithm.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match.
    #[error("bad token signature")]
    BadSignature,
    /// Past `exp`.
    #[error("token has expired")]
    Expired,
}

/// A signed token for `owner` valid from `now` for `ttl`.
pub fn issue(
    secret: &[u8],
    owner: Uuid,
    email: &str,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> (String, Claims) {
    let iat = now.timestamp();
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let claims = Claims {
        sub: owner,
        user_id: owner,
        email: email.to_string(),
        iat,
        exp: iat.saturating_add(ttl_secs),
        jti: Uuid::new_v4(),
    };
    let payload = serde_json::to_vec(&claims).expect("claims serialize");
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(payload));
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, &signing_input).finalize().into_bytes());
    (format!("{signing_input}.{signature}"), claims)
}

/// The claims of `token` if it is well formed, signed with `secret` and not expired at `now`.
pub fn verify(secret: &[u8], token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let signing_input = &token[..header.len() + 1 + payload.len()];
    mac(secret, signing_input).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    // Signed by us, so the header is ours; still insist on it rather than trust a field.
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;
    if header["alg"] != "HS256" {
        return Err(TokenError::Malformed);
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if now.timestamp() >= claims.exp {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

fn mac(secret: &[u8], input: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(input.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn an_issued_token_verifies_until_its_expiry_instant() {
        let now = Utc::now();
        let owner = Uuid::new_v4();
        let (token, claims) = issue(b"secret", owner, "a@example.com", now, DAY);
        let got = verify(b"secret", &token, now).unwrap();
        assert_eq!(got, claims);
        assert_eq!((got.sub, got.user_id, got.email.as_str()), (owner, owner, "a@example.com"));
        assert_eq!(got.exp - got.iat, 86_400);
        let at_expiry = DateTime::from_timestamp(claims.exp, 0).unwrap();
        assert_eq!(verify(b"secret", &token, at_expiry), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let now = Utc::now();
        let (token, _) = issue(b"secret", Uuid::new_v4(), "a@example.com", now, DAY);
        assert_eq!(verify(b"other secret", &token, now), Err(TokenError::BadSignature));
        let (h, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert_eq!(verify(b"secret", &format!("{h}.{forged}.{sig}"), now), Err(TokenError::BadSignature));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            verify(b"secret", &format!("{none}.{}.", rest.split_once('.').unwrap().0), now),
            Err(TokenError::BadSignature)
        );
        assert_eq!(verify(b"secret", "a.b", now), Err(TokenError::Malformed));
        assert_eq!(verify(b"secret", "test-admin-token", now), Err(TokenError::Malformed));
    }
}
