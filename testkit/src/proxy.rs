//! A TCP proxy a test can cut and restore, to take a dependency away from
//! the code under test without stopping the server other tests share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards every connection made to [`TcpProxy::address`] to `target`.
/// [`cut`](TcpProxy::cut) closes the open connections and makes new ones
/// fail at once, as a crashed server would; [`restore`](TcpProxy::restore)
/// lets them through again. [`freeze`](TcpProxy::freeze) keeps every
/// connection open but holds the bytes, both ways, as a blocked or hung
/// server would, until [`thaw`](TcpProxy::thaw).
/// [`lose_replies`](TcpProxy::lose_replies) lets requests through but
/// closes a connection instead of passing on the server's reply, as a
/// server that dies after doing what it was asked would, until restored.
pub struct TcpProxy {
    address: SocketAddr,
    up: watch::Sender<bool>,
    flowing: watch::Sender<bool>,
    replying: watch::Sender<bool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (up, up_receiver) = watch::channel(true);
        let (flowing, _) = watch::channel(true);
        let (replying, _) = watch::channel(true);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let acceptor = tokio::spawn(accept(
            listener,
            target,
            up_receiver,
            [flowing.subscribe(), replying.subscribe()],
            connections.clone(),
        ));
        Self {
            address,
            up,
            flowing,
            replying,
            connections,
            acceptor,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Closes every open connection and refuses new ones until restored.
    pub fn cut(&self) {
        self.up.send_replace(false);
        self.connections.lock().expect("proxy lock").abort_all();
    }

    /// Lets connections in (again) and replies through (again).
    pub fn restore(&self) {
        self.up.send_replace(true);
        self.replying.send_replace(true);
    }

    /// Passes requests on, but closes each connection the moment its
    /// server answers, dropping the answer, until restored.
    pub fn lose_replies(&self) {
        self.replying.send_replace(false);
    }

    /// Holds every byte, both ways, on open connections and new ones.
    pub fn freeze(&self) {
        self.flowing.send_replace(false);
    }

    /// Lets the held bytes, and the ones after them, through.
    pub fn thaw(&self) {
        self.flowing.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.connections.lock().expect("proxy lock").abort_all();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    up: watch::Receiver<bool>,
    [flowing, replying]: [watch::Receiver<bool>; 2],
    connections: Arc<Mutex<JoinSet<()>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if !*up.borrow() {
            // Accepted and closed at once: the client sees the connection
            // reset, like a server that is down behind a load balancer.
            drop(client);
            continue;
        }
        let mut connections = connections.lock().expect("proxy lock");
        while connections.try_join_next().is_some() {}
        let (flowing, replying) = (flowing.clone(), replying.clone());
        connections.spawn(async move {
            if let Ok(server) = TcpStream::connect(target).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::select! {
                    () = pump(client_read, server_write, flowing.clone(), None) => {}
                    () = pump(server_read, client_write, flowing, Some(replying)) => {}
                }
            }
        });
    }
}

/// Copies `from` to `to` until either ends, holding what it read while
/// the proxy is frozen; with `replying` (the server's side), ending
/// instead of passing on what it read while replies are lost.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut flowing: watch::Receiver<bool>,
    replying: Option<watch::Receiver<bool>>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if flowing.wait_for(|flowing| *flowing).await.is_err() {
            return;
        }
        if replying
            .as_ref()
            .is_some_and(|replying| !*replying.borrow())
        {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
