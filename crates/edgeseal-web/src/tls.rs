//! HTTPS (`[web] tls`): the rustls server configuration from the PEM files
//! given, or from a CA and certificate made on first use in
//! `<data_dir>/web` for localhost, 127.0.0.1 and the listen addresses
//! (clients trust `ca.pem`); and the accept loop that serves the router over it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use edgeseal_agent::config::WebTls;
use edgeseal_agent::{Error, Result};
use edgeseal_mqtt::pki::{self, Leaf};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A server configuration ready to serve, and what to tell the user of it.
#[derive(Debug, Clone)]
pub struct Served {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate (DER), as browsers show it: `AB:CD:…`.
    pub fingerprint: String,
    /// The CA clients trust, when the agent made the certificate.
    pub ca: Option<PathBuf>,
}

fn bad(what: String) -> Error {
    Error::Config(what)
}

/// Loads (or makes, on first use) the certificate and key for `tls`.
pub fn server_config(tls: &WebTls, data_dir: &Path, listen: &[SocketAddr]) -> Result<Served> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key, ca) = match &tls.files {
        Some((c, k)) => (c.clone(), k.clone(), None),
        None => {
            let dir = data_dir.join("web");
            let (cert, key, ca) = (dir.join("server.pem"), dir.join("server-key.pem"), dir.join("ca.pem"));
            if !cert.exists() || !key.exists() {
                make(&dir, listen)?;
            }
            (cert, key, Some(ca))
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| bad(format!("web.cert {}: not a PEM certificate: {e}", cert.display())))?;
    let first = chain.first().ok_or_else(|| bad(format!("web.cert {} holds no certificate", cert.display())))?;
    let fingerprint = Sha256::digest(first.as_ref()).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let private = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| bad(format!("web.key {}: not a PEM private key: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| bad(format!("web.cert and web.key do not make a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Served { config: Arc::new(config), fingerprint, ca })
}

/// A CA and a server certificate for localhost, 127.0.0.1 and the listen addresses, in `dir`.
fn make(dir: &Path, listen: &[SocketAddr]) -> Result<()> {
    edgeseal_agent::datadir::create_private_dir(dir)?;
    let now = time::OffsetDateTime::now_utc();
    let mqtt = |e: edgeseal_mqtt::Error| Error::Internal(format!("cannot make the web server's certificate: {e}"));
    let ca = pki::new_ca("edgeseal web CA", now, 3650).map_err(mqtt)?;
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    ips.extend(listen.iter().map(SocketAddr::ip).filter(|ip| !ip.is_unspecified() && !ip.is_loopback()));
    let leaf = Leaf::Server { dns: vec!["localhost".into()], ips };
    let server = pki::issue(&ca, &leaf, now, 825).map_err(mqtt)?;
    pki::save(dir, "ca", &ca).map_err(mqtt)?;
    pki::save(dir, "server", &server).map_err(mqtt)?;
    Ok(())
}

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, router: Router, tls: Arc<rustls::ServerConfig>, shutdown: CancellationToken) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    debug!("accepting a connection failed: {e}");
                    continue;
                }
            },
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => return debug!("TLS handshake with {peer} failed: {e}"),
            };
            let app = router.layer(axum::Extension(ConnectInfo(peer)));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!("HTTPS connection from {peer}: {e}");
            }
        });
    }
}
