//! Signing a callback's body, as a receiver verifies it (docs/callbacks.md):
//! `x-agentmesh-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` where the
//! HMAC is keyed with the tenant's secret over `<t>.<body>` — the scheme of
//! Stripe's webhooks, so receivers can reuse their verification code. The
//! timestamp is inside the signed bytes, so a captured request cannot be
//! replayed later with a fresh timestamp; with several secrets (a rotation)
//! the header carries one `v1=` per secret.

use ring::hmac;

use super::secrets::Secret;

/// The signature header.
pub(crate) const SIGNATURE_HEADER: &str = "x-agentmesh-signature";
/// The delivery id header (the same for every attempt of a delivery).
pub(crate) const DELIVERY_HEADER: &str = "x-agentmesh-delivery";
/// The event type header (`run.step`, `run.finished`, …).
pub(crate) const EVENT_HEADER: &str = "x-agentmesh-event";

/// Lowercase hex HMAC-SHA256 of `<timestamp>.<body>` keyed with `secret`.
pub(crate) fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    hex::encode(context.sign().as_ref())
}

/// The signature header's value: `t=<timestamp>` then `v1=<signature>` for
/// each secret, comma-separated.
pub(crate) fn signature_header(secrets: &[Secret], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&signature(secret.expose(), timestamp, body));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_is_hmac_sha256() {
        // RFC 4231, test case 2 (the key "Jefe"): the same primitive, fed
        // the timestamp and the dot separately.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_known_body_has_a_known_signature() {
        // Computed independently: Python's
        // hmac.new(secret, b"1700000000." + body, hashlib.sha256).hexdigest()
        let body = br#"{"type":"run.finished","run_id":"r1"}"#;
        assert_eq!(
            signature(b"whsec_0123456789abcdef", 1_700_000_000, body),
            "f33159af8f3a4b57b1d32d37eb8a64a5fcb8331de33f392c9b3c7f9b46be5dbd"
        );
        let secrets = [
            Secret::new(b"whsec_0123456789abcdef".to_vec()),
            Secret::new(b"old-secret-0123456789".to_vec()),
        ];
        assert_eq!(
            signature_header(&secrets, 1_700_000_000, body),
            "t=1700000000,\
             v1=f33159af8f3a4b57b1d32d37eb8a64a5fcb8331de33f392c9b3c7f9b46be5dbd,\
             v1=7ec518e2fbdbfe8dfe9ef5204393f487df93acfef630152a981cb652016344a7"
        );
    }

    #[test]
    fn the_timestamp_and_every_byte_of_the_body_are_signed() {
        let secret = b"whsec_0123456789abcdef";
        let base = signature(secret, 1_700_000_000, b"{}");
        assert_ne!(base, signature(secret, 1_700_000_001, b"{}"));
        assert_ne!(base, signature(secret, 1_700_000_000, b"{ }"));
        assert_ne!(
            base,
            signature(b"another secret of 16+", 1_700_000_000, b"{}")
        );
    }
}
