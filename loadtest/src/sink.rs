//! `--serve-204`: the upstream of a forwarding benchmark. A remote-write endpoint that reads
//! every body to its end and answers 204, as fast as hyper lets it, so what a benchmark of
//! the gateway's remote-write sink measures is the gateway, not the receiver. It keeps
//! nothing; it counts requests and body bytes and prints them as JSON when stopped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the endpoint received.
#[derive(Debug, Default)]
pub struct Received {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Body bytes read.
    pub bytes: AtomicU64,
}

/// Serves on `addr` (HTTP/1.1 and h2c) until `stop`; returns what it received.
pub async fn serve_204(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<Arc<Received>> {
    let listener = TcpListener::bind(addr).await?;
    let received = Arc::new(Received::default());
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(received),
            accepted = listener.accept() => accepted?,
        };
        let _ = stream.set_nodelay(true);
        let received = received.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let received = received.clone();
                async move {
                    let n = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    received.requests.fetch_add(1, Relaxed);
                    received.bytes.fetch_add(n as u64, Relaxed);
                    let mut r = Response::new(Empty::<Bytes>::new());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_answers_204_and_counts_what_it_read() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_204(addr, stop.clone()));
        let mut stream = loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                break s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"POST /api/v1/write HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("HTTP/1.1 204"));
        stop.cancel();
        let received = server.await.unwrap().unwrap();
        assert_eq!(received.requests.load(Relaxed), 1);
        assert_eq!(received.bytes.load(Relaxed), 5);
    }
}
