//! Talking HTTP to a service under test: one client set-up, and a request's
//! status, `Retry-After` and JSON body read in one step.

use serde_json::Value;

/// A status and a parsed JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
    pub headers: reqwest::header::HeaderMap,
}

impl Answer {
    /// The `error` text of a JSON error body, panicking when there is none.
    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The number under `key` of a 200 answer (`"chat number"`,
    /// `"message number"`), panicking on anything else.
    pub fn number(&self, key: &str) -> i64 {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body[key]
            .as_i64()
            .unwrap_or_else(|| panic!("no {key:?} in {}", self.body))
    }
}

/// A client for loopback services: no proxy from the environment.
/// A client sending `Authorization: Bearer {token}` with every request.
pub fn client_with_bearer(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a token is a valid header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// Sends `request` and reads the answer, which must be JSON (every
/// service of the project answers JSON, errors included).
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the service answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().expect("an ASCII header").to_owned());
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("a JSON body, got {status} {text:?}"));
    Answer {
        status,
        body,
        retry_after,
        headers,
    }
}
