//! An in-process emulator of Stack Auth's server users API, for the migrate-users tests and
//! benchmark.
//!
//! It serves HTTP/1.1 on 127.0.0.1 (a free port) from its own tokio runtime, so plain `#[test]`s
//! can start one and run the real `fmig` binary against it. It implements the contract of
//! `shared/specs/stack-auth-users-api.md` as faithfully as the tests need:
//! - the three headers on every request: missing/invalid access type or project -> 400 known
//!   errors, a wrong or missing server key -> 401 `INVALID_SECRET_SERVER_KEY`;
//! - `POST /api/v1/users` -> 201 with the user read object, after the server's checks: unknown
//!   fields and wrong types (400 `SCHEMA_ERROR`), the HTML e-mail rule (which rejects
//!   internationalised domains), verification/auth flags without an e-mail, `password` and
//!   `password_hash` together, the bcrypt pattern `^\$2[ayb]\$.{56}$` with cost <= 16 (plain
//!   400 "Invalid password hash"), password sign-in disabled, OAuth provider ids outside the
//!   project's set (plain 400), and 409 `USER_EMAIL_ALREADY_EXISTS` (header + JSON body) when
//!   another user signs in with the e-mail; e-mails are stored lower-cased;
//! - `GET /api/v1/users` with `limit`, `cursor` (a user id), `desc`, `query` (exact id, or
//!   case-insensitive substring of display name or e-mail) and `include_anonymous` /
//!   `include_restricted`: without them, anonymous users and restricted ones (unverified
//!   e-mail while the project requires verification) are NOT listed;
//! - `GET /api/v1/users/{id}` -> the user or 404 `USER_NOT_FOUND`.
//!
//! Faults ([`Faults`], changeable while running): latency per request, a share of 429s (with
//! `Retry-After` only on some of them, like the real dev proxy), a share of 5xx, a share of
//! creates whose connection is dropped after the user was stored, and "stall after create"
//! (the user is stored, the answer held back) so a test can kill the client at exactly that
//! moment. Tests inspect what was stored with [`Emulator::users`].
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const PROJECT_ID: &str = "6a1e5b2c-7f3d-4c8e-9a0b-1c2d3e4f5a6b";
pub const SECRET_KEY: &str = "ssk_emulator_secret_8c1f0e7a9b2d4c6e";
pub const PUBLISHABLE_CLIENT_KEY: &str = "pck_emulator_publishable_3b9d2e";

/// The project's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub project_id: String,
    pub secret_key: String,
    /// OAuth provider ids configured in the project.
    pub oauth_providers: Vec<String>,
    pub password_auth_enabled: bool,
    pub otp_auth_enabled: bool,
    /// Users with an unverified e-mail are "restricted" and hidden from default lists.
    pub require_email_verification: bool,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            project_id: PROJECT_ID.into(),
            secret_key: SECRET_KEY.into(),
            oauth_providers: [
                "google",
                "github",
                "microsoft",
                "apple",
                "discord",
                "gitlab",
                "bitbucket",
                "linkedin",
                "x",
                "facebook",
                "spotify",
                "twitch",
            ]
            .map(String::from)
            .to_vec(),
            password_auth_enabled: true,
            otp_auth_enabled: true,
            require_email_verification: true,
            seed: 7,
        }
    }
}

/// Faults injected into answers. Rates are fractions in [0, 1].
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every request before it is handled.
    pub latency: Duration,
    /// Share of requests answered 429.
    pub rate_429: f64,
    /// Share of those 429s that carry `Retry-After`.
    pub retry_after_share: f64,
    /// The `Retry-After` value, in seconds.
    pub retry_after_secs: u64,
    /// Share of requests answered 500/502/503.
    pub rate_5xx: f64,
    /// Share of successful creates whose connection is closed without an answer.
    pub drop_after_create: f64,
    /// Hold every create's answer, after storing the user, until [`Emulator::release`].
    pub stall_after_create: bool,
    /// Extra delay after storing a user and before answering (a slow server: the client may
    /// time out although the user exists).
    pub delay_after_create: Duration,
}

/// A user as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredUser {
    pub id: String,
    pub primary_email: Option<String>,
    pub primary_email_verified: bool,
    pub primary_email_auth_enabled: bool,
    pub display_name: Option<String>,
    pub password: Option<String>,
    pub password_hash: Option<String>,
    pub oauth_providers: Vec<Value>,
    pub client_metadata: Value,
    pub client_read_only_metadata: Value,
    pub server_metadata: Value,
    pub profile_image_url: Option<String>,
    pub otp_auth_enabled: bool,
    pub is_anonymous: bool,
    pub signed_up_at_millis: i64,
    /// The TOTP secret's bytes (`totp_secret_base64` decoded).
    pub totp_secret: Option<Vec<u8>>,
}

/// Standard base64 (padding required), as the server validates it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &c in chunk {
            n <<= 6;
            if c == b'=' {
                pad += 1;
            } else if pad > 0 {
                return None;
            } else {
                n |= ALPHABET.iter().position(|&a| a == c)? as u32;
            }
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

impl StoredUser {
    /// The 6-digit TOTP code (RFC 6238: SHA-1, 30 s steps) the server expects at `unix_seconds`
    /// from the stored secret.
    pub fn totp_code(&self, unix_seconds: u64) -> Option<String> {
        let secret = self.totp_secret.clone()?;
        let totp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, secret);
        Some(totp.generate(unix_seconds))
    }

    pub fn supabase_user_id(&self) -> Option<&str> {
        self.server_metadata.get("supabase_user_id")?.as_str()
    }

    fn restricted(&self, config: &Config) -> bool {
        config.require_email_verification
            && self.primary_email.is_some()
            && !self.primary_email_verified
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "primary_email": self.primary_email,
            "primary_email_verified": self.primary_email_verified,
            "primary_email_auth_enabled": self.primary_email_auth_enabled,
            "display_name": self.display_name,
            "has_password": self.password.is_some() || self.password_hash.is_some(),
            "oauth_providers": self.oauth_providers,
            "client_metadata": self.client_metadata,
            "client_read_only_metadata": self.client_read_only_metadata,
            "server_metadata": self.server_metadata,
            "profile_image_url": self.profile_image_url,
            "signed_up_at_millis": self.signed_up_at_millis,
            "last_active_at_millis": self.signed_up_at_millis,
            "is_anonymous": self.is_anonymous,
            "otp_auth_enabled": self.otp_auth_enabled,
            "passkey_auth_enabled": false,
            "selected_team_id": null,
            "selected_team": null,
            "requires_totp_mfa": self.totp_secret.is_some(),
            "auth_with_email": self.primary_email_auth_enabled
                && (self.password.is_some() || self.password_hash.is_some() || self.otp_auth_enabled),
        })
    }
}

/// Requests seen, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub creates: u64,
    pub created: u64,
    pub lists: u64,
    pub gets: u64,
    pub rate_limited: u64,
    pub rate_limited_with_retry_after: u64,
    pub server_errors: u64,
    pub dropped: u64,
    pub unauthorized: u64,
    pub conflicts: u64,
    pub rejected: u64,
}

struct State {
    config: Config,
    faults: Faults,
    users: Vec<StoredUser>,
    counts: Counts,
    rng: u64,
    clock: i64,
}

struct Shared {
    state: Mutex<State>,
    release: Notify,
    stalled: AtomicU64,
}

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Emulator {
    pub fn start() -> Emulator {
        Self::start_with(Config::default(), Faults::default())
    }

    pub fn start_with(config: Config, faults: Faults) -> Emulator {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("stack-auth-emulator")
            .build()
            .expect("emulator runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the emulator");
        let addr = listener.local_addr().expect("emulator address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rng: config.seed ^ 0x5DEECE66D,
                config,
                faults,
                users: Vec::new(),
                counts: Counts::default(),
                clock: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            }),
            release: Notify::new(),
            stalled: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = accept_shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    // An Err from the service (a "dropped" create) closes the connection
                    // without an answer, which is the point.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Emulator {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// The API base URL, as STACK_AUTH_API_URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// STACK_AUTH_* variables for this emulator, as `fmig` reads them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let state = self.shared.state.lock().unwrap();
        vec![
            ("STACK_AUTH_API_URL", self.url()),
            ("STACK_AUTH_PROJECT_ID", state.config.project_id.clone()),
            ("STACK_AUTH_SECRET_KEY", state.config.secret_key.clone()),
            (
                "STACK_AUTH_PUBLISHABLE_CLIENT_KEY",
                PUBLISHABLE_CLIENT_KEY.to_string(),
            ),
        ]
    }

    /// Deletes a user, as an administrator in the dashboard would.
    pub fn delete_user(&self, id: &str) {
        self.shared
            .state
            .lock()
            .unwrap()
            .users
            .retain(|u| u.id != id);
    }

    /// Changes a stored user in place, as an administrator's edit in the dashboard would.
    pub fn update_user(&self, id: &str, change: impl FnOnce(&mut StoredUser)) {
        let mut state = self.shared.state.lock().unwrap();
        let user = state
            .users
            .iter_mut()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("update_user: no user {id}"));
        change(user);
    }

    /// Replaces the project's server key (a key revoked or rotated mid-run).
    pub fn set_secret_key(&self, key: &str) {
        self.shared.state.lock().unwrap().config.secret_key = key.to_string();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.state.lock().unwrap().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.state.lock().unwrap().faults.clone()
    }

    /// Lets every stalled create answer (and later ones not stall, unless set again).
    pub fn release(&self) {
        self.shared.state.lock().unwrap().faults.stall_after_create = false;
        self.shared.release.notify_waiters();
    }

    /// Creates stored whose answers are being held back.
    pub fn stalled(&self) -> u64 {
        self.shared.stalled.load(Ordering::SeqCst)
    }

    pub fn users(&self) -> Vec<StoredUser> {
        self.shared.state.lock().unwrap().users.clone()
    }

    pub fn counts(&self) -> Counts {
        self.shared.state.lock().unwrap().counts.clone()
    }

    /// Stores a user directly (an account that existed before the migration), with a body as
    /// the create endpoint takes it, validated the same way. Returns its id.
    pub fn insert_user(&self, body: Value) -> String {
        let mut state = self.shared.state.lock().unwrap();
        match create_user(&mut state, &body) {
            Ok(user) => user.id,
            Err((status, response)) => panic!("insert_user: {status} {:?}", response.body()),
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.release.notify_waiters();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Why a connection was closed on purpose.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

type Answer = Result<Response<Full<Bytes>>, Dropped>;

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn known_error(
    status: StatusCode,
    code: &str,
    message: &str,
    details: Option<Value>,
) -> Response<Full<Bytes>> {
    let mut body = json!({"code": code, "error": message});
    if let Some(d) = details {
        body["details"] = d;
    }
    let mut response = json_response(status, &body);
    response
        .headers_mut()
        .insert("x-stack-known-error", code.parse().unwrap());
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text.to_string())))
        .unwrap()
}

fn next_random(state: &mut State) -> f64 {
    state.rng = state.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = state.rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn uuid_v4(state: &mut State) -> String {
    let a = (next_random(state) * (1u64 << 52) as f64) as u64;
    let b = (next_random(state) * (1u64 << 52) as f64) as u64;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let hex = format!(
        "{:013x}{:013x}{:06x}",
        a,
        b ^ nanos,
        state.users.len() as u64 & 0xffffff
    );
    format!(
        "{}-{}-4{}-{}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..15],
        ["8", "9", "a", "b"][(a & 3) as usize],
        &hex[15..18],
        &hex[18..30]
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Answer {
    let (latency, fault) = {
        let mut state = shared.state.lock().unwrap();
        let latency = state.faults.latency;
        (latency, pick_fault(&mut state))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    if let Some(response) = fault {
        return Ok(response);
    }
    if method == Method::POST && path == "/api/v1/auth/password/sign-in" {
        let state = shared.state.lock().unwrap();
        return Ok(password_sign_in(&state, &headers, &body));
    }
    {
        let mut state = shared.state.lock().unwrap();
        if let Some(response) = check_headers(&mut state, &headers) {
            return Ok(response);
        }
    }
    let rest = path.strip_prefix("/api/v1/users");
    match (method, rest) {
        (Method::POST, Some("") | Some("/")) => create(shared, &body).await,
        (Method::GET, Some("") | Some("/")) => Ok(list(&shared, &query)),
        (Method::GET, Some(id)) if id.starts_with('/') && !id[1..].contains('/') => {
            let id = percent_decode(&id[1..]);
            let mut state = shared.state.lock().unwrap();
            state.counts.gets += 1;
            Ok(match state.users.iter().find(|u| u.id == id) {
                Some(u) => json_response(StatusCode::OK, &u.to_json()),
                None => known_error(
                    StatusCode::NOT_FOUND,
                    "USER_NOT_FOUND",
                    "User not found.",
                    None,
                ),
            })
        }
        _ => Ok(plain(StatusCode::NOT_FOUND, "Not found")),
    }
}

/// The client API's password sign-in: the stored password or bcrypt hash checked; a TOTP user
/// gets `MULTI_FACTOR_AUTHENTICATION_REQUIRED` once the password is right.
fn password_sign_in(
    state: &State,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("x-stack-access-type") != Some("client") {
        return known_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ACCESS_TYPE",
            "The x-stack-access-type header must be 'client'.",
            None,
        );
    }
    if get("x-stack-project-id") != Some(state.config.project_id.as_str()) {
        return known_error(
            StatusCode::BAD_REQUEST,
            "CURRENT_PROJECT_NOT_FOUND",
            "The current project was not found.",
            None,
        );
    }
    if get("x-stack-publishable-client-key") != Some(PUBLISHABLE_CLIENT_KEY) {
        return known_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_PUBLISHABLE_CLIENT_KEY",
            "The publishable client key is not valid for the project.",
            None,
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return plain(StatusCode::BAD_REQUEST, "Request body is not valid JSON");
    };
    let (Some(email), Some(password)) = (body["email"].as_str(), body["password"].as_str()) else {
        return plain(StatusCode::BAD_REQUEST, "email and password are required");
    };
    let email = email.to_lowercase();
    let user = state.users.iter().find(|u| {
        u.primary_email_auth_enabled && u.primary_email.as_deref() == Some(email.as_str())
    });
    let accepted = user.filter(|u| match (&u.password, &u.password_hash) {
        (Some(plain), _) => plain == password,
        (None, Some(hash)) => bcrypt::verify(password, hash).unwrap_or(false),
        (None, None) => false,
    });
    match accepted {
        None => known_error(
            StatusCode::BAD_REQUEST,
            "EMAIL_PASSWORD_MISMATCH",
            "Wrong e-mail or password.",
            None,
        ),
        Some(u) if u.totp_secret.is_some() => known_error(
            StatusCode::BAD_REQUEST,
            "MULTI_FACTOR_AUTHENTICATION_REQUIRED",
            "Multi-factor authentication is required for this user.",
            Some(json!({"attempt_code": format!("attempt-{}", u.id)})),
        ),
        Some(u) => json_response(
            StatusCode::OK,
            &json!({"access_token": format!("at-{}", u.id), "refresh_token": format!("rt-{}", u.id), "user_id": u.id}),
        ),
    }
}

/// A 429 or 5xx for this request, by the configured rates.
fn pick_fault(state: &mut State) -> Option<Response<Full<Bytes>>> {
    let faults = state.faults.clone();
    if faults.rate_429 > 0.0 && next_random(state) < faults.rate_429 {
        state.counts.rate_limited += 1;
        let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        if next_random(state) < faults.retry_after_share {
            state.counts.rate_limited_with_retry_after += 1;
            response.headers_mut().insert(
                "retry-after",
                faults.retry_after_secs.to_string().parse().unwrap(),
            );
        }
        return Some(response);
    }
    if faults.rate_5xx > 0.0 && next_random(state) < faults.rate_5xx {
        state.counts.server_errors += 1;
        let status = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][(next_random(state) * 3.0) as usize % 3];
        return Some(plain(status, "Internal server error"));
    }
    None
}

fn check_headers(state: &mut State, headers: &hyper::HeaderMap) -> Option<Response<Full<Bytes>>> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let response = match get("x-stack-access-type") {
        None => known_error(
            StatusCode::BAD_REQUEST,
            "ACCESS_TYPE_REQUIRED",
            "You must specify an access level for this Stack project.",
            None,
        ),
        Some("server") => match get("x-stack-project-id") {
            None => known_error(
                StatusCode::BAD_REQUEST,
                "ACCESS_TYPE_WITHOUT_PROJECT_ID",
                "The x-stack-access-type header was 'server', but the x-stack-project-id header was not provided.",
                None,
            ),
            Some(p) if p != state.config.project_id => known_error(
                StatusCode::BAD_REQUEST,
                "CURRENT_PROJECT_NOT_FOUND",
                "The current project was not found.",
                None,
            ),
            Some(_) => match get("x-stack-secret-server-key") {
                Some(k) if k == state.config.secret_key => return None,
                None => known_error(
                    StatusCode::UNAUTHORIZED,
                    "SERVER_AUTHENTICATION_REQUIRED",
                    "The secret server key must be provided.",
                    None,
                ),
                Some(_) => known_error(
                    StatusCode::UNAUTHORIZED,
                    "INVALID_SECRET_SERVER_KEY",
                    "The secret server key is not valid for the project.",
                    None,
                ),
            },
        },
        Some("client") | Some("admin") => known_error(
            StatusCode::UNAUTHORIZED,
            "INSUFFICIENT_ACCESS_TYPE",
            "The x-stack-access-type header must be 'server'.",
            None,
        ),
        Some(_) => known_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ACCESS_TYPE",
            "The x-stack-access-type header is invalid.",
            None,
        ),
    };
    state.counts.unauthorized += 1;
    Some(response)
}

async fn create(shared: Arc<Shared>, body: &[u8]) -> Answer {
    let (result, faults, drop_it) = {
        let mut state = shared.state.lock().unwrap();
        state.counts.creates += 1;
        let result = match serde_json::from_slice::<Value>(body) {
            Ok(v) => create_user(&mut state, &v),
            Err(e) => Err((
                StatusCode::BAD_REQUEST,
                Box::new(schema_error(&format!(
                    "Request body is not valid JSON: {e}"
                ))),
            )),
        };
        let faults = state.faults.clone();
        let drop_it = result.is_ok()
            && faults.drop_after_create > 0.0
            && next_random(&mut state) < faults.drop_after_create;
        match &result {
            Ok(_) => state.counts.created += 1,
            Err((StatusCode::CONFLICT, _)) => state.counts.conflicts += 1,
            Err(_) => state.counts.rejected += 1,
        }
        if drop_it {
            state.counts.dropped += 1;
        }
        (result, faults, drop_it)
    };
    let user = match result {
        Ok(user) => user,
        Err((_, response)) => return Ok(*response),
    };
    if drop_it {
        return Err(Dropped);
    }
    if faults.stall_after_create {
        let notified = shared.release.notified();
        shared.stalled.fetch_add(1, Ordering::SeqCst);
        let _ = tokio::time::timeout(Duration::from_secs(120), notified).await;
        shared.stalled.fetch_sub(1, Ordering::SeqCst);
    }
    if !faults.delay_after_create.is_zero() {
        tokio::time::sleep(faults.delay_after_create).await;
    }
    Ok(json_response(StatusCode::CREATED, &user.to_json()))
}

/// A refused create: the status (for the counts) and the answer, boxed to keep `Result` small.
type Rejection = (StatusCode, Box<Response<Full<Bytes>>>);

fn schema_error(message: &str) -> Response<Full<Bytes>> {
    known_error(StatusCode::BAD_REQUEST, "SCHEMA_ERROR", message, None)
}

fn bad(message: &str) -> Rejection {
    (StatusCode::BAD_REQUEST, Box::new(schema_error(message)))
}

fn plain_bad(text: &str) -> Rejection {
    (
        StatusCode::BAD_REQUEST,
        Box::new(plain(StatusCode::BAD_REQUEST, text)),
    )
}

const CREATE_FIELDS: &[&str] = &[
    "primary_email",
    "primary_email_verified",
    "primary_email_auth_enabled",
    "display_name",
    "password",
    "password_hash",
    "oauth_providers",
    "client_metadata",
    "client_read_only_metadata",
    "server_metadata",
    "profile_image_url",
    "otp_auth_enabled",
    "totp_secret_base64",
    "is_anonymous",
];

/// The server's create, checks first; stores and returns the user.
fn create_user(state: &mut State, body: &Value) -> Result<StoredUser, Rejection> {
    let Some(obj) = body.as_object() else {
        return Err(bad("Request body must be an object"));
    };
    for key in obj.keys() {
        if !CREATE_FIELDS.contains(&key.as_str()) {
            return Err(bad(&format!("body contains unknown properties: {key}")));
        }
    }
    let opt_str = |k: &str| -> Result<Option<String>, Rejection> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("body.{k} must be a `string` type"))),
        }
    };
    let opt_bool = |k: &str| -> Result<Option<bool>, Rejection> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad(&format!("body.{k} must be a `boolean` type"))),
        }
    };
    let opt_object = |k: &str| -> Result<Value, Rejection> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(Value::Object(Map::new())),
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            Some(_) => Err(bad(&format!("body.{k} must be an object"))),
        }
    };
    let email = opt_str("primary_email")?;
    if email.as_deref().is_some_and(|e| !html_email_valid(e)) {
        return Err(bad("body.primary_email must be a valid email"));
    }
    let email = email.map(|e| e.to_lowercase());
    let verified = opt_bool("primary_email_verified")?.unwrap_or(false);
    let auth_enabled = opt_bool("primary_email_auth_enabled")?.unwrap_or(false);
    if email.is_none() && verified {
        return Err(bad(
            "primary_email_verified cannot be true without primary_email",
        ));
    }
    if email.is_none() && auth_enabled {
        return Err(bad(
            "primary_email_auth_enabled cannot be true without primary_email",
        ));
    }
    let display_name = opt_str("display_name")?;
    let password = opt_str("password")?;
    let password_hash = opt_str("password_hash")?;
    if password.is_some() && password_hash.is_some() {
        return Err(plain_bad(
            "Cannot set both password and password_hash at the same time.",
        ));
    }
    if password_hash.as_deref().is_some_and(|h| !bcrypt_pattern(h)) {
        return Err(plain_bad("Invalid password hash"));
    }
    if (password.is_some() || password_hash.is_some()) && !state.config.password_auth_enabled {
        return Err(plain_bad("Password authentication is not enabled"));
    }
    let totp_secret = match opt_str("totp_secret_base64")? {
        None => None,
        Some(text) => Some(
            base64_decode(&text)
                .ok_or_else(|| bad("body.totp_secret_base64 must be a valid base64 string"))?,
        ),
    };
    let otp = opt_bool("otp_auth_enabled")?.unwrap_or(false);
    if otp && !state.config.otp_auth_enabled {
        return Err(plain_bad("OTP authentication is not enabled"));
    }
    let mut providers = Vec::new();
    match obj.get("oauth_providers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                let id = item.get("id").and_then(Value::as_str);
                let account = item.get("account_id").and_then(Value::as_str);
                let (Some(id), Some(account)) = (id, account) else {
                    return Err(bad(
                        "body.oauth_providers[] needs id and account_id strings",
                    ));
                };
                if let Some(extra) = item.as_object().and_then(|o| {
                    o.keys()
                        .find(|k| !["id", "account_id", "email"].contains(&k.as_str()))
                }) {
                    return Err(bad(&format!(
                        "body.oauth_providers[] contains unknown properties: {extra}"
                    )));
                }
                if !state.config.oauth_providers.iter().any(|p| p == id) {
                    return Err(plain_bad(&format!("OAuth provider {id} not found")));
                }
                providers.push(json!({
                    "id": id,
                    "account_id": account,
                    "email": item.get("email").cloned().unwrap_or(Value::Null),
                }));
            }
        }
        Some(_) => return Err(bad("body.oauth_providers must be an array")),
    }
    let profile_image_url = opt_str("profile_image_url")?;
    if profile_image_url
        .as_deref()
        .is_some_and(|url| !(url.starts_with("http://") || url.starts_with("https://")))
    {
        return Err(bad("body.profile_image_url must be a valid URL"));
    }
    let client_metadata = opt_object("client_metadata")?;
    let client_read_only_metadata = opt_object("client_read_only_metadata")?;
    let server_metadata = opt_object("server_metadata")?;
    let is_anonymous = opt_bool("is_anonymous")?.unwrap_or(false);
    if let (Some(e), true) = (&email, auth_enabled) {
        let taken = state
            .users
            .iter()
            .any(|u| u.primary_email_auth_enabled && u.primary_email.as_deref() == Some(e));
        if taken {
            return Err((
                StatusCode::CONFLICT,
                Box::new(known_error(
                    StatusCode::CONFLICT,
                    "USER_EMAIL_ALREADY_EXISTS",
                    &format!("A user with email {e} already exists."),
                    Some(json!({"email": e, "would_work_if_email_was_verified": false})),
                )),
            ));
        }
    }
    state.clock += 1;
    let user = StoredUser {
        id: uuid_v4(state),
        primary_email: email,
        primary_email_verified: verified,
        primary_email_auth_enabled: auth_enabled,
        display_name,
        password,
        password_hash,
        oauth_providers: providers,
        client_metadata,
        client_read_only_metadata,
        server_metadata,
        profile_image_url,
        otp_auth_enabled: otp,
        is_anonymous,
        signed_up_at_millis: state.clock,
        totp_secret,
    };
    state.users.push(user.clone());
    Ok(user)
}

fn list(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let mut state = shared.state.lock().unwrap();
    state.counts.lists += 1;
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let known: HashSet<&str> = [
        "limit",
        "cursor",
        "order_by",
        "desc",
        "query",
        "include_anonymous",
        "include_restricted",
        "team_id",
    ]
    .into();
    if let Some((k, _)) = params.iter().find(|(k, _)| !known.contains(k.as_str())) {
        return schema_error(&format!("query contains unknown properties: {k}"));
    }
    let limit = match get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if n >= 1 => n,
        _ => return schema_error("query.limit must be an integer >= 1"),
    };
    let flag = |k: &str| get(k) == Some("true");
    let include_anonymous = flag("include_anonymous");
    let include_restricted = include_anonymous || flag("include_restricted");
    let text = get("query").map(str::to_lowercase);
    let config = state.config.clone();
    let mut items: Vec<&StoredUser> = state
        .users
        .iter()
        .filter(|u| include_anonymous || !u.is_anonymous)
        .filter(|u| include_restricted || !u.restricted(&config))
        .filter(|u| match &text {
            None => true,
            Some(t) => {
                u.id == *t
                    || u.display_name
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase().contains(t.as_str()))
                    || u.primary_email
                        .as_deref()
                        .is_some_and(|e| e.contains(t.as_str()))
            }
        })
        .collect();
    if get("desc") == Some("true") {
        items.reverse();
    }
    let start = match get("cursor") {
        None => 0,
        Some(c) => match items.iter().position(|u| u.id == c) {
            Some(i) => i,
            None => return schema_error("query.cursor is not a user id of this list"),
        },
    };
    let page: Vec<Value> = items
        .iter()
        .skip(start)
        .take(limit)
        .map(|u| u.to_json())
        .collect();
    let next = items.get(start + limit).map(|u| u.id.clone());
    json_response(
        StatusCode::OK,
        &json!({"items": page, "is_paginated": true, "pagination": {"next_cursor": next}}),
    )
}

/// The HTML standard's valid e-mail address, as yup's `.email()` implements it.
pub fn html_email_valid(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c));
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    local_ok && domain.split('.').all(label_ok)
}

/// `^\$2[ayb]\$.{56}$` and a cost of at most 16, as Stack Auth checks a password hash.
pub fn bcrypt_pattern(hash: &str) -> bool {
    let chars: Vec<char> = hash.chars().collect();
    let shape = chars.len() == 60
        && chars[0] == '$'
        && chars[1] == '2'
        && matches!(chars[2], 'a' | 'y' | 'b')
        && chars[3] == '$';
    if !shape {
        return false;
    }
    let cost: String = chars[4..6].iter().collect();
    cost.parse::<u32>().is_ok_and(|c| c <= 16)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
