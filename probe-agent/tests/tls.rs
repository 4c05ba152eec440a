//! HTTPS with `--tls-cert-file/--tls-key-file`: a renewed certificate is served to new
//! connections without a restart, and a half-written pair keeps the previous one (no root).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use probe_agent::{
    metrics::Metrics,
    serve::{self, AppState, ServeOptions, tls::ReloadingTls},
};
use rcgen::{CertificateParams, CertifiedIssuer, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{broadcast, oneshot, watch},
};
use tokio_rustls::{TlsConnector, rustls};

mod common;

use common::Empty;

/// A certificate for `localhost` issued by `ca`, written to `dir` as cert.pem and key.pem.
/// Returns the certificate's DER.
fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    dir: &Path,
    serial: u64,
) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.serial_number = Some(serial.into());
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    // Written beside, then renamed: what the kubelet's atomic Secret update amounts to.
    std::fs::write(dir.join("cert.tmp"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).unwrap();
    cert.der().clone()
}

/// Connects over TLS trusting only `ca`, GETs /healthz; returns the server's certificate
/// and the status line.
async fn fetch(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> (CertificateDer<'static>, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // A peer closing without close_notify is fine here: the answer is complete.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    (
        presented,
        answer.lines().next().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("netprobe-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let ca_der = ca.der().clone();
    let first = issue(&ca, &dir, 1);

    let tls = ReloadingTls::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let (stop_watch, watching) = watch::channel(false);
    tokio::spawn(Arc::clone(&tls).watch(Duration::from_millis(100), watching));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let state = AppState::new(
        Arc::new(Empty(broadcast::channel(4).0)),
        Arc::new(Metrics::default()),
    );
    let options = ServeOptions {
        tls: Some(Arc::clone(&tls)),
        ..ServeOptions::default()
    };
    tokio::spawn(serve::serve_with(listener, state, options, async move {
        let _ = stopped.await;
    }));

    let (presented, status) = fetch(addr, &ca_der).await;
    assert_eq!(presented, first);
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Plain HTTP on the TLS port gets no answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));

    let second = issue(&ca, &dir, 2);
    assert_ne!(first, second);
    let mut served = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (presented, status) = fetch(addr, &ca_der).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        if presented == second {
            served = Some(presented);
            break;
        }
    }
    assert_eq!(
        served,
        Some(second.clone()),
        "the renewed certificate within 5 s"
    );

    // A certificate without its key (mid-rotation) is not served: the last pair stays.
    std::fs::write(
        dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(tls.reload_if_changed().is_err());
    assert_eq!(fetch(addr, &ca_der).await.0, second);

    stop_watch.send_replace(true);
    drop(stop);
    let _ = std::fs::remove_dir_all(&dir);
}
