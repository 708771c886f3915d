//! A fake WebSocket upstream on loopback (any path): it echoes every text
//! or binary message, and on the text message `ticks <n> <ms>` sends `n`
//! text messages `tick <i>`, `ms` apart, as a model streaming audio or
//! tokens over a realtime session would. It answers a close frame with one
//! and closes the connection. [`serve`] runs the same session on a stream
//! another server upgraded (the fake LLM's `/v1/realtime`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A running fake upstream; stops when dropped.
pub struct FakeWs {
    pub addr: SocketAddr,
    sessions: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeWs {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<FakeWs> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| anyhow::anyhow!("fake WebSocket upstream cannot listen: {e}"))?;
        let addr = listener.local_addr()?;
        let sessions = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&sessions);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = session(stream).await;
                });
            }
        });
        Ok(FakeWs {
            addr,
            sessions,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many sessions (upgrades) reached this upstream.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::SeqCst)
    }
}

impl Drop for FakeWs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(stream: TcpStream) -> anyhow::Result<()> {
    serve(tokio_tungstenite::accept_async(stream).await?).await
}

/// The fake's session on an upgraded connection: echoes, `ticks <n> <ms>`,
/// and the close handshake.
pub async fn serve<S>(ws: WebSocketStream<S>) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let (out, mut queue) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = queue.recv().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(msg) = rx.next().await {
        match msg? {
            Message::Text(t) => {
                if let Some((n, ms)) = ticks(t.as_str()) {
                    let out = out.clone();
                    tokio::spawn(async move {
                        for i in 0..n {
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if out.send(Message::text(format!("tick {i}"))).is_err() {
                                return;
                            }
                        }
                    });
                } else {
                    let _ = out.send(Message::Text(t));
                }
            }
            Message::Binary(b) => {
                let _ = out.send(Message::Binary(b));
            }
            // tungstenite answers pings and close frames itself.
            _ => {}
        }
    }
    drop(out);
    writer.abort();
    Ok(())
}

fn ticks(text: &str) -> Option<(u64, u64)> {
    let mut words = text.strip_prefix("ticks ")?.split(' ');
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}
