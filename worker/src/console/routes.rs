//! The console's HTTP surface: the login page and the console page (with
//! their script and style), and the JSON API the page calls. Every `/api`
//! route needs a session; the actions also need the admin's role and the
//! session's CSRF token.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::actions::{self, Selection};
use super::audit::Line;
use super::auth::{COOKIE, CSRF_HEADER, Role, Session};
use super::letters::Filter as LetterFilter;
use super::state::State;
use crate::replay::Destination;

const LOGIN_HTML: &str = include_str!("assets/login.html");
const CONSOLE_HTML: &str = include_str!("assets/console.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Largest body an action or a login may send.
const MAX_BODY_BYTES: u64 = 1024 * 1024;

pub(crate) fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    // The session of the request's cookie, if it has a live one.
    let session = warp::cookie::optional::<String>(COOKIE)
        .and(with_state.clone())
        .map(|cookie: Option<String>, state: Arc<State>| state.auth.session(cookie.as_deref()));

    let pages = {
        let index = warp::path::end().and(warp::get()).and(session.clone()).map(
            |session: Option<Session>| match session {
                Some(_) => html(CONSOLE_HTML, StatusCode::OK),
                None => redirect("/login", None),
            },
        );
        let login_page = warp::path!("login")
            .and(warp::get())
            .map(|| html(&login_page(None), StatusCode::OK));
        let script = warp::path!("console.js")
            .and(warp::get())
            .map(|| asset(CONSOLE_JS, "text/javascript; charset=utf-8"));
        let style = warp::path!("console.css")
            .and(warp::get())
            .map(|| asset(CONSOLE_CSS, "text/css; charset=utf-8"));
        index
            .or(login_page)
            .unify()
            .or(script)
            .unify()
            .or(style)
            .unify()
            .boxed()
    };

    let login = warp::path!("login")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::form::<LoginForm>())
        .and(with_state.clone())
        .map(login)
        .boxed();
    let logout = warp::path!("logout")
        .and(warp::post())
        .and(warp::cookie::optional::<String>(COOKIE))
        .and(session.clone())
        .and(warp::header::optional::<String>(CSRF_HEADER))
        .and(with_state.clone())
        .map(logout)
        .boxed();

    let api = {
        let who = warp::path!("api" / "session")
            .and(warp::get())
            .and(session.clone())
            .map(|session: Option<Session>| {
                signed_in(session, |session| {
                    no_store(warp::reply::json(&serde_json::json!({
                        "user": session.user,
                        "role": session.role,
                        "csrf": session.csrf,
                    })))
                })
            });
        let overview = warp::path!("api" / "overview")
            .and(warp::get())
            .and(session.clone())
            .and(with_state.clone())
            .then(|session: Option<Session>, state: Arc<State>| async move {
                match session {
                    Some(_) => no_store(warp::reply::json(&state.overview.report().await)),
                    None => unauthorized(),
                }
            });
        let letters = warp::path!("api" / "letters")
            .and(warp::get())
            .and(session.clone())
            .and(warp::query::<HashMap<String, String>>())
            .and(with_state.clone())
            .then(list_letters);
        let letter = warp::path!("api" / "letters" / String)
            .and(warp::get())
            .and(session.clone())
            .and(with_state.clone())
            .then(show_letter);
        let act = warp::path!("api" / String)
            .and(warp::post())
            .and(session)
            .and(warp::header::optional::<String>(CSRF_HEADER))
            .and(shared::http::json_body::<Selection>(MAX_BODY_BYTES))
            .and(with_state)
            .then(act);
        who.or(overview)
            .unify()
            .or(letters)
            .unify()
            .or(letter)
            .unify()
            .or(act)
            .unify()
            .boxed()
    };

    let mut secure = HeaderMap::new();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        secure.insert(name, HeaderValue::from_static(value));
    }
    shared::http::healthz()
        .or(pages)
        .unify()
        .or(login)
        .unify()
        .or(logout)
        .unify()
        .or(api)
        .unify()
        .recover(shared::http::recover)
        .unify()
        .with(warp::reply::with::headers(secure))
        .map(Reply::into_response)
        .boxed()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    user: String,
    password: String,
}

fn login(form: LoginForm, state: Arc<State>) -> Response {
    match state.auth.login(&form.user, &form.password) {
        Some((id, session)) => {
            state.audit.write(&Line {
                user: &session.user,
                action: "login",
                selection: String::new(),
                matched: 0,
                done: 0,
                error: None,
            });
            redirect("/", Some(state.auth.cookie(&id)))
        }
        None => {
            // The name tried is not logged: it may be a password typed in
            // the wrong field.
            state.audit.write(&Line {
                user: "-",
                action: "login_failed",
                selection: String::new(),
                matched: 0,
                done: 0,
                error: None,
            });
            html(
                &login_page(Some("Wrong name or password.")),
                StatusCode::UNAUTHORIZED,
            )
        }
    }
}

fn logout(
    cookie: Option<String>,
    session: Option<Session>,
    csrf: Option<String>,
    state: Arc<State>,
) -> Response {
    let Some(session) = session else {
        return unauthorized();
    };
    if !session.csrf_matches(csrf.as_deref()) {
        return forbidden("missing or wrong CSRF token");
    }
    state.auth.logout(cookie.as_deref());
    state.audit.write(&Line {
        user: &session.user,
        action: "logout",
        selection: String::new(),
        matched: 0,
        done: 0,
        error: None,
    });
    let mut response = no_store(warp::reply::json(
        &serde_json::json!({ "logged_out": true }),
    ));
    set_cookie(&mut response, &state.auth.cleared_cookie());
    response
}

/// The query of a listing: the filter's fields, `page`, `per_page`, and
/// `fresh` to read the queue again now.
fn listing(query: &HashMap<String, String>) -> Result<(LetterFilter, usize, usize, bool), String> {
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match query.get(name).map(|value| value.trim()) {
            None | Some("") => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| format!("{name} must be a whole number")),
        }
    };
    let text = |name: &str| query.get(name).cloned();
    let at = |name: &str| -> Result<Option<u64>, String> {
        match query.get(name).map(|value| value.trim()) {
            None | Some("") => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|_| format!("{name} must be ms since the epoch")),
        }
    };
    let known = [
        "reason",
        "kind",
        "application",
        "error",
        "from_ms",
        "to_ms",
        "page",
        "per_page",
        "fresh",
    ];
    if let Some(unknown) = query.keys().find(|key| !known.contains(&key.as_str())) {
        return Err(format!("unknown parameter {unknown}"));
    }
    let filter = LetterFilter {
        reason: text("reason"),
        kind: text("kind"),
        application: text("application"),
        error: text("error"),
        from_ms: at("from_ms")?,
        to_ms: at("to_ms")?,
    }
    .normalized();
    Ok((
        filter,
        number("page", 1)? as usize,
        number("per_page", 50)? as usize,
        query
            .get("fresh")
            .is_some_and(|value| value == "1" || value == "true"),
    ))
}

async fn list_letters(
    session: Option<Session>,
    query: HashMap<String, String>,
    state: Arc<State>,
) -> Response {
    if session.is_none() {
        return unauthorized();
    }
    let (filter, page, per_page, fresh) = match listing(&query) {
        Ok(listing) => listing,
        Err(message) => return shared::http::error(StatusCode::BAD_REQUEST, message),
    };
    match state.letters.snapshot(fresh).await {
        Ok(snapshot) => no_store(warp::reply::json(&snapshot.page(&filter, page, per_page))),
        Err(error) => unavailable(&error),
    }
}

async fn show_letter(id: String, session: Option<Session>, state: Arc<State>) -> Response {
    if session.is_none() {
        return unauthorized();
    }
    match state.letters.snapshot(false).await {
        Ok(snapshot) => match snapshot.row(&id) {
            Some(row) => no_store(warp::reply::json(&row.detail())),
            None => shared::http::error(
                StatusCode::NOT_FOUND,
                "no dead letter of that id (replayed or discarded meanwhile?)",
            ),
        },
        Err(error) => unavailable(&error),
    }
}

async fn act(
    action: String,
    session: Option<Session>,
    csrf: Option<String>,
    body: Result<Selection, shared::http::BodyError>,
    state: Arc<State>,
) -> Response {
    let destination = match action.as_str() {
        "replay" => Destination::Jobs,
        "discard" => Destination::Discarded {
            retention: state.retention,
        },
        _ => return shared::http::error(StatusCode::NOT_FOUND, "no such route"),
    };
    let Some(session) = session else {
        return unauthorized();
    };
    if session.role != Role::Admin {
        return forbidden("read-only: this user cannot replay or discard");
    }
    if !session.csrf_matches(csrf.as_deref()) {
        return forbidden("missing or wrong CSRF token");
    }
    let selection = match body {
        Ok(selection) => selection,
        Err(error) => {
            let status = match error {
                shared::http::BodyError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                shared::http::BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
            };
            return shared::http::error(status, error);
        }
    };
    if selection.is_empty() {
        return shared::http::error(
            StatusCode::BAD_REQUEST,
            "nothing selected: give ids, or a filter (an empty one matches every letter)",
        );
    }
    let result = actions::act(&state, destination, &selection).await;
    state.letters.invalidate().await;
    let (done, error) = match &result {
        Ok(done) => (*done, None),
        Err(error) => (actions::Done::default(), Some(error.to_string())),
    };
    state.audit.write(&Line {
        user: &session.user,
        action: &action,
        selection: selection.describe(),
        matched: done.matched,
        done: done.moved,
        error: error.clone(),
    });
    match result {
        Ok(done) => no_store(warp::reply::json(&done)),
        Err(error) => unavailable(&error),
    }
}

fn signed_in(session: Option<Session>, then: impl FnOnce(Session) -> Response) -> Response {
    match session {
        Some(session) => then(session),
        None => unauthorized(),
    }
}

fn unauthorized() -> Response {
    shared::http::error(StatusCode::UNAUTHORIZED, "log in first")
}

fn forbidden(message: &str) -> Response {
    shared::http::error(StatusCode::FORBIDDEN, message)
}

fn unavailable(error: &anyhow::Error) -> Response {
    tracing::warn!(error = %error, "console: the broker could not be read");
    shared::http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("RabbitMQ could not be read: {error}"),
    )
}

fn no_store(reply: impl Reply) -> Response {
    let mut response = reply.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn html(body: &str, status: StatusCode) -> Response {
    no_store(warp::reply::with_status(
        warp::reply::html(body.to_owned()),
        status,
    ))
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut response = warp::redirect::see_other(warp::http::Uri::from_static(to)).into_response();
    if let Some(cookie) = cookie {
        set_cookie(&mut response, &cookie);
    }
    response
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}

fn login_page(error: Option<&str>) -> String {
    LOGIN_HTML.replace(
        "<!--error-->",
        &error.map_or(String::new(), |error| {
            format!("<p class=\"error\" id=\"login-error\">{error}</p>")
        }),
    )
}
