//! The API's accept loop, so that no client can hold what the agent needs: a cap on open
//! connections (beyond it, new ones are closed at once), a deadline for each request's
//! headers (idle keep-alive connections and slowloris clients included), a deadline for
//! each write (a client that stops reading is dropped with what it held), and TLS.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Sleep,
};

use super::tls::ReloadingTls;

/// How the API's connections are bounded, and whether they are TLS.
#[derive(Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub tls: Option<Arc<ReloadingTls>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Accepts until `shutdown`, then turns `closing` true, asks every connection to finish
/// its request and waits for them (the caller bounds that wait).
pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    closing: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before accept:
                    // wait a little rather than spin.
                    tracing::warn!("accepting an API connection: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("API connection refused: {} open", options.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            router.clone(),
            options.clone(),
            closing.subscribe(),
            slot,
        ));
    }
    closing.send_replace(true);
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    router: Router,
    options: ServeOptions,
    closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let stream = WriteTimeout::new(stream, options.write_timeout);
    match &options.tls {
        None => http(stream, router, options.header_timeout, closing).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            // The handshake is bounded like a request's headers.
            match tokio::time::timeout(options.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => http(stream, router, options.header_timeout, closing).await,
                Ok(Err(err)) => tracing::debug!("TLS handshake failed: {err}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn http<I>(
    io: I,
    router: Router,
    header_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Armed whenever the connection waits for a request, from the first one on.
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let closed = async move {
        while !*closing.borrow_and_update() {
            if closing.changed().await.is_err() {
                return;
            }
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = closed => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!("API connection ended: {err}");
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited `timeout` for the
/// client to take bytes: the connection, its answer and what it holds are dropped.
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
        }
    }

    /// After a write that made no progress: Ready(error) once the deadline passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no data for {timeout:?}"),
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
