//! jsonwebtoken's signature checks, done by ring.
//!
//! jsonwebtoken brings its crypto as features (aws-lc-rs or RustCrypto);
//! both would be a second crypto library next to ring, which rustls already
//! uses. Its `CryptoProvider` hook lets the process supply the crypto
//! instead: this one verifies the asymmetric algorithms with ring and
//! refuses everything else — HMAC above all, so a token "signed" with a
//! public key as an HMAC secret can never pass, whatever the settings say.
//! It cannot sign: agentmesh only verifies tokens.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as ring_sig;

/// The provider: verification only, by ring.
static RING: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: unsupported_rsa,
        rsa_pub_components_from_public_key: unsupported_rsa,
        ec_pub_components_from_private_key: |_, _| Err(unsupported()),
        ed_pub_components_from_private_key: |_, _| Err(unsupported()),
        compute_digest,
    },
};

/// Makes ring the process's JWT crypto. Whether a provider is in place
/// afterwards (another part of the process may have installed one first,
/// which is then used).
pub(crate) fn install() -> bool {
    let _ = CryptoProvider::install_default(&RING);
    CryptoProvider::try_get_default().is_some()
}

fn unsupported() -> Error {
    ErrorKind::Provider("agentmesh only verifies tokens with public keys".to_owned()).into()
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(unsupported())
}

fn unsupported_rsa(_: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
    Err(unsupported())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(unsupported()),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

/// ring's verification algorithm for `alg`, and the key family it needs.
/// `None` for HMAC and anything unknown.
pub(crate) fn ring_algorithm(
    alg: Algorithm,
) -> Option<(
    AlgorithmFamily,
    &'static dyn ring_sig::VerificationAlgorithm,
)> {
    let found: (
        AlgorithmFamily,
        &'static dyn ring_sig::VerificationAlgorithm,
    ) = match alg {
        Algorithm::RS256 => (AlgorithmFamily::Rsa, &ring_sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => (AlgorithmFamily::Rsa, &ring_sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => (AlgorithmFamily::Rsa, &ring_sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => (AlgorithmFamily::Rsa, &ring_sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => (AlgorithmFamily::Rsa, &ring_sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => (AlgorithmFamily::Rsa, &ring_sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => (AlgorithmFamily::Ec, &ring_sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => (AlgorithmFamily::Ec, &ring_sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => (AlgorithmFamily::Ed, &ring_sig::ED25519),
        _ => return None,
    };
    Some(found)
}

/// The public key a token is checked against.
enum PublicKey {
    /// RSA modulus and exponent (from a JWK).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// What ring reads directly: an EC point, an Ed25519 key, or an RSA
    /// key in PKCS#1 DER.
    Raw(Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    ring: &'static dyn ring_sig::VerificationAlgorithm,
    key: PublicKey,
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let (family, ring) = ring_algorithm(*alg).ok_or(ErrorKind::InvalidAlgorithm)?;
    // The key's type decides which algorithms may use it, not the token.
    if key.family() != family {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match key.kind() {
        // ring reads integers without leading zero bytes, which some
        // issuers put in front of the modulus anyway.
        DecodingKeyKind::RsaModulusExponent { n, e } => PublicKey::Rsa {
            n: without_leading_zeros(n),
            e: without_leading_zeros(e),
        },
        DecodingKeyKind::SecretOrDer(bytes) => PublicKey::Raw(bytes.clone()),
    };
    Ok(Box::new(RingVerifier {
        alg: *alg,
        ring,
        key,
    }))
}

fn without_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .skip_while(|byte| *byte == 0)
        .collect()
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let verified = match &self.key {
            PublicKey::Rsa { n, e } => {
                let params = rsa_parameters(self.alg).ok_or_else(signature::Error::new)?;
                ring_sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
            }
            PublicKey::Raw(bytes) => {
                ring_sig::UnparsedPublicKey::new(self.ring, bytes).verify(msg, signature)
            }
        };
        verified.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static ring_sig::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}
