//! An HTTP proxy that counts the requests passing through it and can answer
//! in the upstream's place with an error status, or hold requests back:
//! the chat-system returning 500s, 429s or timing out, on demand.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::Filter;
use warp::http::{HeaderMap, Method, Response, StatusCode};
use warp::hyper::body::Bytes;

/// What the proxy does with a request instead of (or before) forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status without asking the upstream.
    Status(u16),
    /// Wait this long before forwarding (longer than a client's timeout
    /// makes it time out).
    Delay(Duration),
}

#[derive(Default)]
struct Script {
    /// Applied to every request while set.
    always: Option<Fault>,
    /// Applied to the next `n` requests, before `always`.
    next: Vec<Fault>,
    /// Every request seen.
    seen: Vec<Seen>,
}

/// A request that reached the proxy.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct HttpProxy {
    pub address: SocketAddr,
    pub url: String,
    script: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl HttpProxy {
    pub async fn start(upstream: &str) -> Self {
        let script = Arc::new(Mutex::new(Script::default()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client");
        let upstream = upstream.trim_end_matches('/').to_owned();
        let state = script.clone();
        let route = warp::any()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: HeaderMap,
                      body: Bytes| {
                    let (client, upstream, state) =
                        (client.clone(), upstream.clone(), state.clone());
                    async move {
                        let fault = {
                            let mut script = state.lock().expect("proxy lock");
                            script.seen.push(Seen {
                                method: method.clone(),
                                path: path.as_str().to_owned(),
                                headers: headers.clone(),
                                body: body.clone(),
                            });
                            if script.next.is_empty() {
                                script.always
                            } else {
                                Some(script.next.remove(0))
                            }
                        };
                        match fault {
                            Some(Fault::Status(status)) => {
                                return answer(status, b"{\"error\":\"injected fault\"}".to_vec());
                            }
                            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
                            None => {}
                        }
                        let mut url = format!("{upstream}{}", path.as_str());
                        if !query.is_empty() {
                            url = format!("{url}?{query}");
                        }
                        let mut request = client.request(method, url).body(body);
                        for (name, value) in &headers {
                            if name != "host" {
                                request = request.header(name, value);
                            }
                        }
                        match request.send().await {
                            Ok(response) => {
                                let status = response.status().as_u16();
                                let body = response
                                    .bytes()
                                    .await
                                    .map(|bytes| bytes.to_vec())
                                    .unwrap_or_default();
                                answer(status, body)
                            }
                            Err(_) => answer(502, b"{\"error\":\"upstream unreachable\"}".to_vec()),
                        }
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let server = tokio::spawn(warp::serve(route).incoming(listener).run());
        Self {
            address,
            url: format!("http://{address}"),
            script,
            server,
        }
    }

    /// Applies `fault` to the next `times` requests.
    pub fn fail_next(&self, times: usize, fault: Fault) {
        let mut script = self.script.lock().expect("proxy lock");
        script.next.extend(std::iter::repeat_n(fault, times));
    }

    /// Applies `fault` to every request until [`HttpProxy::heal`].
    pub fn fail_always(&self, fault: Fault) {
        self.script.lock().expect("proxy lock").always = Some(fault);
    }

    pub fn heal(&self) {
        let mut script = self.script.lock().expect("proxy lock");
        script.always = None;
        script.next.clear();
    }

    /// How many requests so far were `method` on a path starting with
    /// `prefix` and ending with `suffix`.
    pub fn count(&self, method: &str, prefix: &str, suffix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| {
                seen.method == method
                    && seen.path.starts_with(prefix)
                    && seen.path.ends_with(suffix)
            })
            .count()
    }

    /// Faults queued with [`HttpProxy::fail_next`] that no request has met
    /// yet.
    pub fn pending_faults(&self) -> usize {
        self.script.lock().expect("proxy lock").next.len()
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.script.lock().expect("proxy lock").seen.clone()
    }
}

fn answer(status: u16, body: Vec<u8>) -> Result<Response<warp::hyper::body::Bytes>, Infallible> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("a valid header value"),
    );
    Ok(response)
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}
