use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::*;

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A self-signed certificate with `dns` and `uris` as its names.
fn self_signed(dns: &[&str], uris: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(
        dns.iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*uri).try_into().unwrap()));
    }
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn the_names_of_a_certificate_are_its_uri_and_dns_alternative_names() {
    let (cert, _) = self_signed(
        &["Orchestrator.Agentmesh.svc"],
        &["spiffe://cluster.local/ns/agentmesh/sa/orchestrator"],
    );
    let names = names_of(&CertificateDer::from_pem_slice(cert.as_bytes()).unwrap());
    assert_eq!(
        names.uris,
        ["spiffe://cluster.local/ns/agentmesh/sa/orchestrator"]
    );
    assert_eq!(names.dns_names, ["orchestrator.agentmesh.svc"]);
    assert!(names_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_empty());
}

#[test]
fn unusable_files_are_named_by_their_setting_without_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&["localhost"], &[]);
    let (_, other_key) = self_signed(&["localhost"], &[]);
    let settings = |cert_file: PathBuf, key_file: PathBuf| ServerTls {
        cert_file,
        key_file,
        ..ServerTls::default()
    };
    let good_cert = write(dir.path(), "cert.pem", &cert);
    let good_key = write(dir.path(), "key.pem", &key);
    ReloadingAcceptor::load(&settings(good_cert.clone(), good_key.clone())).unwrap();

    let cases = [
        (
            settings(dir.path().join("missing.pem"), good_key.clone()),
            "server.tls.cert_file",
        ),
        (
            settings(write(dir.path(), "junk.pem", "hello"), good_key.clone()),
            "server.tls.cert_file",
        ),
        (
            settings(
                good_cert.clone(),
                write(dir.path(), "cert-as-key.pem", &cert),
            ),
            "server.tls.key_file",
        ),
        (
            settings(
                good_cert.clone(),
                write(dir.path(), "other.key", &other_key),
            ),
            "server.tls.key_file",
        ),
    ];
    for (settings, setting) in cases {
        let err = ReloadingAcceptor::load(&settings).unwrap_err();
        assert_eq!(err.setting, setting, "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }
    let with_bad_ca = ServerTls {
        client_ca_file: Some(write(dir.path(), "ca.pem", "not a bundle")),
        client_auth: ClientAuth::Required,
        ..settings(good_cert, good_key)
    };
    assert_eq!(
        ReloadingAcceptor::load(&with_bad_ca).unwrap_err().setting,
        "server.tls.client_ca_file"
    );
}

#[test]
fn a_reload_happens_only_on_a_change_and_keeps_the_last_good_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&["localhost"], &[]);
    let settings = ServerTls {
        cert_file: write(dir.path(), "cert.pem", &cert),
        key_file: write(dir.path(), "key.pem", &key),
        ..ServerTls::default()
    };
    let acceptor = ReloadingAcceptor::load(&settings).unwrap();
    assert!(!acceptor.reload_if_changed().unwrap());
    std::fs::write(&settings.key_file, "-----BEGIN PRIVATE KEY-----\nsecret\n").unwrap();
    let err = acceptor.reload_if_changed().unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
    // Reported once, not at every check.
    assert!(!acceptor.reload_if_changed().unwrap());
    let (cert, key) = self_signed(&["localhost"], &[]);
    std::fs::write(&settings.cert_file, cert).unwrap();
    std::fs::write(&settings.key_file, key).unwrap();
    assert!(acceptor.reload_if_changed().unwrap());
}

#[test]
fn settings_are_checked_naming_them() {
    let tls = |change: fn(&mut ServerTls)| {
        let mut tls = ServerTls {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
            ..ServerTls::default()
        };
        change(&mut tls);
        tls.validate().err().map(|err| err.setting)
    };
    assert_eq!(tls(|_| {}), None);
    assert_eq!(
        tls(|tls| tls.key_file = PathBuf::new()).as_deref(),
        Some("server.tls.key_file")
    );
    assert_eq!(
        tls(|tls| tls.client_auth = ClientAuth::Required).as_deref(),
        Some("server.tls.client_ca_file")
    );
    assert_eq!(
        tls(|tls| tls.client_ca_file = Some("ca.pem".into())).as_deref(),
        Some("server.tls.client_auth")
    );
    assert_eq!(
        tls(|tls| tls.reload_interval = std::time::Duration::ZERO).as_deref(),
        Some("server.tls.reload_interval")
    );
    let client = ClientTls {
        cert_file: Some("client.pem".into()),
        ..ClientTls::default()
    };
    assert_eq!(
        client.validate().unwrap_err().setting,
        "server.client_tls.key_file"
    );
    let client = ClientTls {
        server_name: Some("orchestrator.agentmesh.svc".into()),
        ..ClientTls::default()
    };
    client.validate().unwrap();
}
