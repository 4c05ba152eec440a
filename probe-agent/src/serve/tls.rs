//! HTTPS for the API: a certificate and key from PEM files, read again whenever either
//! file changes (cert-manager renews the Secret; the kubelet swaps the mounted files), so
//! a renewed certificate is served without a restart. New connections take the newest
//! configuration; open ones keep the one they started with.

use std::{
    fs::Metadata,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::watch;
use tokio_rustls::rustls::{self, ServerConfig};

/// How often the files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate chain {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    #[error("reading the private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate {cert} and key {key} do not make a server configuration: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What identifies one version of a file: a rewrite or a swapped symlink changes it.
type Stamp = (u64, u64, u64, Option<SystemTime>);

fn stamp(path: &Path) -> Result<Stamp, TlsError> {
    let meta: Metadata = std::fs::metadata(path).map_err(|source| TlsError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((meta.dev(), meta.ino(), meta.len(), meta.modified().ok()))
}

/// The serving configuration, kept in line with the files.
pub struct ReloadingTls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<ServerConfig>,
    stamps: Mutex<(Stamp, Stamp)>,
}

impl ReloadingTls {
    /// Reads both files now: a bad pair is an error at start.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let stamps = (stamp(cert)?, stamp(key)?);
        let config = read_config(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(config),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again if either changed. Ok(true) when a new pair is served; an
    /// unreadable or mismatched pair (one file rewritten before the other) keeps the
    /// previous one and is tried again next time.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.cert)?, stamp(&self.key)?);
        let mut stamps = self
            .stamps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *stamps == now {
            return Ok(false);
        }
        let config = read_config(&self.cert, &self.key)?;
        self.current.store(Arc::new(config));
        *stamps = now;
        Ok(true)
    }

    /// Looks at the files every `every` until `shutdown` turns true.
    pub async fn watch(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|&stop| stop) => return,
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "serving the renewed TLS certificate")
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(
                    "TLS certificate not reloaded, the previous one is still served: {err}"
                ),
            }
        }
    }
}

fn read_config(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let config_error = |source| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    // The provider named, not the process default: several may be linked in.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
