//! A TCP proxy a test can cut and restore, to take a dependency away from
//! the code under test without stopping the server other tests share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards every connection made to [`TcpProxy::address`] to `target`.
/// [`cut`](TcpProxy::cut) closes the open connections and makes new ones
/// fail at once, as a crashed server would; [`restore`](TcpProxy::restore)
/// lets them through again.
pub struct TcpProxy {
    address: SocketAddr,
    up: watch::Sender<bool>,
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
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let acceptor = tokio::spawn(accept(listener, target, up_receiver, connections.clone()));
        Self {
            address,
            up,
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

    pub fn restore(&self) {
        self.up.send_replace(true);
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
    connections: Arc<Mutex<JoinSet<()>>>,
) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
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
        connections.spawn(async move {
            if let Ok(mut server) = TcpStream::connect(target).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}
