//! Opening an IMAP session: TCP, TLS as configured (implicit, STARTTLS, or
//! plain on loopback), the server greeting, login.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::{Client, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{MailboxSettings, Secret, TlsMode};

/// How long connecting, the greeting and login may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a session could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error("TLS with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("bad TLS server name {0:?}")]
    ServerName(String),
    #[error("the server closed the connection before its greeting")]
    NoGreeting,
    #[error("login as {user} refused: {source}")]
    Login {
        user: String,
        source: async_imap::error::Error,
    },
    #[error("IMAP: {0}")]
    Protocol(#[from] async_imap::error::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
}

/// A plain or TLS connection.
#[derive(Debug)]
pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An IMAP session over either.
pub type ImapSession = Session<MailStream>;

/// Connect, greet, secure and log in.
pub async fn open(mailbox: &MailboxSettings, password: &Secret) -> Result<ImapSession, ImapError> {
    tokio::time::timeout(CONNECT_TIMEOUT, open_inner(mailbox, password))
        .await
        .map_err(|_| ImapError::Timeout("connecting and logging in"))?
}

async fn open_inner(
    mailbox: &MailboxSettings,
    password: &Secret,
) -> Result<ImapSession, ImapError> {
    let host = mailbox.imap_host.as_str();
    let port = mailbox.imap_port;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| ImapError::Connect {
            host: host.into(),
            port,
            source,
        })?;
    // Server push (IDLE) must not wait for Nagle.
    let _ = tcp.set_nodelay(true); // best effort: only latency is at stake
    let client = match mailbox.imap_tls {
        TlsMode::Plain => greeted(Client::new(MailStream::Plain(tcp))).await?,
        TlsMode::Implicit => {
            let tls = tls_wrap(host, tcp).await?;
            greeted(Client::new(MailStream::Tls(Box::new(tls)))).await?
        }
        TlsMode::Starttls => {
            let mut client = greeted(Client::new(MailStream::Plain(tcp))).await?;
            client.run_command_and_check_ok("STARTTLS", None).await?;
            let MailStream::Plain(tcp) = client.into_inner() else {
                return Err(ImapError::NoGreeting);
            };
            let tls = tls_wrap(host, tcp).await?;
            Client::new(MailStream::Tls(Box::new(tls)))
        }
    };
    client
        .login(&mailbox.imap_user, password.expose())
        .await
        .map_err(|(source, _)| ImapError::Login {
            user: mailbox.imap_user.clone(),
            source,
        })
}

/// Read the server's greeting (async-imap leaves that to the caller).
async fn greeted(mut client: Client<MailStream>) -> Result<Client<MailStream>, ImapError> {
    match client.read_response().await {
        Ok(Some(_)) => Ok(client),
        Ok(None) => Err(ImapError::NoGreeting),
        Err(e) => Err(ImapError::Protocol(e.into())),
    }
}

async fn tls_wrap(host: &str, tcp: TcpStream) -> Result<TlsStream<TcpStream>, ImapError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls {
            host: host.into(),
            source: io::Error::other(e),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| ImapError::ServerName(host.into()))?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| ImapError::Tls {
            host: host.into(),
            source,
        })
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
