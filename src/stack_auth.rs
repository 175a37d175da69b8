//! A client for Stack Auth's server API (`/api/v1/users`), as `fmig migrate-users` needs it.
//!
//! What it adds over plain HTTP calls, and why:
//! - **Error classification before any retry** ([`ApiError`]): bad credentials, headers or an
//!   endpoint that is not Stack Auth are [`ApiError::Fatal`] (nothing else can succeed, so the
//!   run stops at once); 429, 5xx and refused connections are [`ApiError::Transient`]; a request
//!   that got no answer after it was sent (timeout, connection dropped) is
//!   [`ApiError::Ambiguous`], because the server may have acted on it - a create must then be
//!   reconciled, never blindly repeated; every other 4xx is [`ApiError::Rejected`], a per-user
//!   failure carrying the server's own message.
//! - **A request budget shared by all workers** ([`Pacer`]): `--rate-limit` spaces request
//!   starts, and a 429's `Retry-After` pauses every worker, since the limit is the project's.
//! - **Back-off** ([`RetryPolicy`]): `Retry-After` when the server sends it (the real dev proxy
//!   omits it half the time on purpose), otherwise exponential with jitter.
//! - **The secret server key never leaves the headers**: it is registered with
//!   [`crate::redact`], marked sensitive in the header map, and absent from every `Debug`.
//!
//! Reads (list, get) retry transient and ambiguous failures themselves (they are safe to
//! repeat); [`Client::create_user`] makes exactly one attempt and leaves the decision to the
//! caller, which knows how to reconcile.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::redact;

/// Stack Auth's cloud API; a self-hosted backend serves the same paths elsewhere.
pub const DEFAULT_API_URL: &str = "https://api.stack-auth.com";

/// The known-error header: its value is the error code.
pub const KNOWN_ERROR_HEADER: &str = "x-stack-known-error";

/// The 409 of a create whose e-mail another user already signs in with.
pub const USER_EMAIL_ALREADY_EXISTS: &str = "USER_EMAIL_ALREADY_EXISTS";

/// Page size of list requests: large enough that 10,000 users take 100 requests.
pub const LIST_PAGE_SIZE: u32 = 100;

/// Known errors that mean "these credentials, headers or this project are wrong": every
/// request would fail the same way.
const FATAL_CODES: &[&str] = &[
    "ACCESS_TYPE_REQUIRED",
    "INVALID_ACCESS_TYPE",
    "ACCESS_TYPE_WITHOUT_PROJECT_ID",
    "CURRENT_PROJECT_NOT_FOUND",
    "PROJECT_NOT_FOUND",
    "INVALID_PROJECT_ID",
    "INVALID_SECRET_SERVER_KEY",
    "SERVER_AUTHENTICATION_REQUIRED",
    "INSUFFICIENT_ACCESS_TYPE",
    "API_KEY_NOT_FOUND",
    "INVALID_API_KEY",
];

/// Where the API is and who we are to it.
#[derive(Clone)]
pub struct Credentials {
    pub api_url: Url,
    pub project_id: String,
    pub secret_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("api_url", &self.api_url.as_str())
            .field("project_id", &self.project_id)
            .field("secret_key", &redact::MASK)
            .finish()
    }
}

impl Credentials {
    /// Checks the three settings and registers the key as a secret at once. `api_url` must be
    /// an http(s) URL; a path (a backend behind a prefix) is kept.
    pub fn new(api_url: &str, project_id: &str, secret_key: &str) -> anyhow::Result<Credentials> {
        let secret_key = secret_key.trim();
        redact::register(secret_key);
        let api_url = Url::parse(api_url.trim()).map_err(|e| {
            anyhow::anyhow!("the Stack Auth API URL {api_url:?} is not a URL ({e})")
        })?;
        if !matches!(api_url.scheme(), "http" | "https") || api_url.host().is_none() {
            anyhow::bail!(
                "the Stack Auth API URL must be http(s)://host[:port][/prefix], not {api_url}"
            );
        }
        let project_id = project_id.trim();
        if project_id.is_empty() {
            anyhow::bail!(
                "no Stack Auth project: set STACK_AUTH_PROJECT_ID in the environment or .env, or pass --project-id"
            );
        }
        if secret_key.is_empty() {
            anyhow::bail!(
                "no Stack Auth secret server key: set STACK_AUTH_SECRET_KEY in the environment or .env \
                 (Stack Auth dashboard > Project settings > API keys; it starts with ssk_)"
            );
        }
        Ok(Credentials {
            api_url,
            project_id: project_id.to_string(),
            secret_key: secret_key.to_string(),
        })
    }
}

/// How failed requests are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// The first back-off without `Retry-After`; it doubles per attempt.
    pub base: Duration,
    /// No back-off (and no `Retry-After`) waits longer than this.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(250),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before attempt `attempt + 1` (`attempt` counts from 1): the server's
    /// `Retry-After` when it sent one, else `base * 2^(attempt-1)` with "equal jitter" (half
    /// fixed, half random), so workers that failed together do not retry together.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.cap);
        }
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let half = exp / 2;
        half + half.mul_f64(jitter_fraction())
    }
}

/// A number in [0, 1) from a cheap hash of the clock and a counter: jitter needs spread, not
/// cryptographic quality, so no random-number crate.
fn jitter_fraction() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses `Retry-After`: delay-seconds (integer, or tolerated decimal) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The request budget every worker draws from: request starts are spaced by `interval`, and
/// no request starts before a pause (from a 429's `Retry-After`) is over.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    state: Mutex<PacerState>,
}

#[derive(Debug)]
struct PacerState {
    next_start: Instant,
    paused_until: Instant,
}

impl Pacer {
    pub fn new(interval: Duration) -> Pacer {
        let now = Instant::now();
        Pacer {
            interval,
            state: Mutex::new(PacerState {
                next_start: now,
                paused_until: now,
            }),
        }
    }

    /// Waits for this request's turn.
    pub async fn wait(&self) {
        let start = {
            let mut state = self.state.lock().await;
            let start = Instant::now().max(state.next_start).max(state.paused_until);
            state.next_start = start + self.interval;
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }

    /// Holds every request back for `wait` from now (a longer pause already set wins).
    pub async fn pause(&self, wait: Duration) {
        let mut state = self.state.lock().await;
        state.paused_until = state.paused_until.max(Instant::now() + wait);
    }
}

/// Settings of a [`Client`] beyond its credentials.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per request, connecting included.
    pub timeout: Duration,
    /// Minimum time between the starts of two requests (`--rate-limit`).
    pub min_interval: Duration,
    pub retry: RetryPolicy,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            min_interval: Duration::ZERO,
            retry: RetryPolicy::default(),
        }
    }
}

/// Why a request failed, classified for what the caller should do next.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Credentials, headers, project or endpoint are wrong: stop everything.
    #[error("{message}")]
    Fatal {
        status: Option<u16>,
        code: Option<String>,
        message: String,
    },
    /// Rate limited, server trouble, or the server could not be reached: back off and retry.
    #[error("{message}")]
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        /// The request never reached the server (connection refused, DNS): a run that keeps
        /// getting this should stop rather than fail user after user.
        unreachable: bool,
        message: String,
    },
    /// The request was sent but no answer came (timeout, connection closed): the server may
    /// have carried it out. A create must be reconciled before it is retried.
    #[error("{message}")]
    Ambiguous { message: String },
    /// This request was refused (400 validation, 409 conflict, 404 user...): report it.
    #[error("{message}")]
    Rejected {
        status: u16,
        code: Option<String>,
        details: Option<Value>,
        message: String,
    },
}

impl ApiError {
    pub fn is_fatal(&self) -> bool {
        matches!(self, ApiError::Fatal { .. })
    }

    /// The known-error code, when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Fatal { code, .. } | ApiError::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Fatal { status, .. } | ApiError::Transient { status, .. } => *status,
            ApiError::Rejected { status, .. } => Some(*status),
            ApiError::Ambiguous { .. } => None,
        }
    }
}

/// An entry of `oauth_providers`, in a create body and in a user read object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthProvider {
    /// The project's provider id (`google`, `microsoft`, ...).
    pub id: String,
    /// The provider's own user id (the OAuth `sub`).
    pub account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The body of `POST /api/v1/users`. Only the fields fmig sets; absent ones are not sent.
/// Its `Debug` masks the password hash.
#[derive(Clone, Default, PartialEq, Serialize)]
pub struct CreateUser {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_email_auth_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A bcrypt MCF hash. Never logged: see [`CreateUser::masked`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub oauth_providers: Vec<OAuthProvider>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_image_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_metadata: Option<Value>,
    /// The user's TOTP secret, its raw bytes in base64: their authenticator app keeps working.
    /// Never logged: see [`CreateUser::masked`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totp_secret_base64: Option<String>,
}

impl fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateUser")
            .field("primary_email", &self.primary_email)
            .field("primary_email_verified", &self.primary_email_verified)
            .field(
                "primary_email_auth_enabled",
                &self.primary_email_auth_enabled,
            )
            .field("display_name", &self.display_name)
            .field(
                "password_hash",
                &self.password_hash.as_deref().map(mask_hash),
            )
            .field("oauth_providers", &self.oauth_providers)
            .field("profile_image_url", &self.profile_image_url)
            .field("client_metadata", &self.client_metadata)
            .field("server_metadata", &self.server_metadata)
            .field(
                "totp_secret_base64",
                &self.totp_secret_base64.as_ref().map(|_| redact::MASK),
            )
            .finish()
    }
}

impl CreateUser {
    /// A copy safe to print: the password hash keeps its algorithm and cost (`$2a$10$`) and
    /// loses the salt and digest; a TOTP secret is masked whole.
    pub fn masked(&self) -> CreateUser {
        CreateUser {
            password_hash: self.password_hash.as_deref().map(mask_hash),
            totp_secret_base64: self
                .totp_secret_base64
                .as_ref()
                .map(|_| redact::MASK.to_string()),
            ..self.clone()
        }
    }
}

/// `$2a$10$<53 chars>` -> `$2a$10$********`.
pub fn mask_hash(hash: &str) -> String {
    match hash.get(..7) {
        Some(prefix) if hash.starts_with("$2") => format!("{prefix}{}", redact::MASK),
        _ => redact::MASK.to_string(),
    }
}

/// Replaces anything that looks like a bcrypt hash in `text` (a server message that echoes a
/// request back) with its masked form.
pub fn mask_hashes_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("$2") {
        out.push_str(&rest[..pos]);
        let candidate = &rest[pos..];
        let len = candidate
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '$' | '.' | '/')))
            .map_or(candidate.len(), |(i, _)| i);
        if len >= 20 {
            out.push_str(&mask_hash(&candidate[..len]));
            rest = &candidate[len..];
        } else {
            out.push_str("$2");
            rest = &candidate[2..];
        }
    }
    out.push_str(rest);
    out
}

/// A user as the API returns it (the fields fmig reads; others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub primary_email: Option<String>,
    #[serde(default)]
    pub primary_email_verified: bool,
    #[serde(default)]
    pub primary_email_auth_enabled: bool,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub has_password: bool,
    #[serde(default)]
    pub oauth_providers: Vec<OAuthProvider>,
    #[serde(default)]
    pub server_metadata: Option<Value>,
    #[serde(default)]
    pub signed_up_at_millis: Option<i64>,
    #[serde(default)]
    pub is_anonymous: bool,
    /// TOTP two-factor authentication is on (a `totp_secret_base64` was set).
    #[serde(default)]
    pub requires_totp_mfa: bool,
}

impl User {
    /// `server_metadata.supabase_user_id`: set by fmig on every user it creates.
    pub fn supabase_user_id(&self) -> Option<&str> {
        self.server_metadata
            .as_ref()?
            .get("supabase_user_id")?
            .as_str()
    }
}

/// One page of `GET /api/v1/users`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UserPage {
    pub items: Vec<User>,
    #[serde(default)]
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Pagination {
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// What to list. `include_anonymous` also includes restricted users: a reconciliation must set
/// it, or users with an unverified e-mail stay invisible and get created twice.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub query: Option<String>,
    pub include_anonymous: bool,
}

/// The Stack Auth server API.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    users_url: Url,
    pacer: Pacer,
    retry: RetryPolicy,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Client {
    pub fn new(credentials: &Credentials, options: &ClientOptions) -> anyhow::Result<Client> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-stack-access-type"),
            HeaderValue::from_static("server"),
        );
        headers.insert(
            HeaderName::from_static("x-stack-project-id"),
            HeaderValue::from_str(&credentials.project_id).map_err(|_| {
                anyhow::anyhow!("the Stack Auth project id holds characters a header cannot")
            })?,
        );
        let mut key = HeaderValue::from_str(&credentials.secret_key).map_err(|_| {
            anyhow::anyhow!("the Stack Auth secret key holds characters a header cannot")
        })?;
        key.set_sensitive(true);
        headers.insert(HeaderName::from_static("x-stack-secret-server-key"), key);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("fmig/", env!("CARGO_PKG_VERSION")))
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            // A redirect could carry the key to another host; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("could not set up the HTTP client: {e}"))?;
        let mut base = credentials
            .api_url
            .as_str()
            .trim_end_matches('/')
            .to_string();
        base.push_str("/api/v1/users");
        Ok(Client {
            http,
            users_url: Url::parse(&base)?,
            pacer: Pacer::new(options.min_interval),
            retry: options.retry.clone(),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    /// Requests sent so far (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that were repeats of a failed one.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Counts a retry made by a caller (a create after back-off).
    pub fn note_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits before retrying after `error` (attempt `attempt` failed). A `Retry-After` pauses
    /// every worker, not just this one: the budget is the project's.
    pub async fn back_off(&self, attempt: u32, error: &ApiError) {
        let retry_after = match error {
            ApiError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = self.retry.delay(attempt, retry_after);
        if retry_after.is_some() {
            self.pacer.pause(wait).await;
        } else {
            tokio::time::sleep(wait).await;
        }
    }

    /// `POST /api/v1/users`, once. The caller decides about retries: after
    /// [`ApiError::Ambiguous`] the user may exist.
    pub async fn create_user(&self, body: &CreateUser) -> Result<User, ApiError> {
        let url = self.users_url.clone();
        let bytes = self.send(Method::POST, url, Some(body)).await?;
        parse_json(&bytes, "the created user")
    }

    /// `GET /api/v1/users/{id}`; `None` for 404 `USER_NOT_FOUND`. Retries transient failures.
    pub async fn get_user(&self, id: &str) -> Result<Option<User>, ApiError> {
        let mut url = self.users_url.clone();
        url.path_segments_mut()
            .map_err(|_| fatal(None, None, "the API URL cannot take a path".into()))?
            .push(id);
        match self.read(url, "a user").await {
            Ok(user) => Ok(Some(user)),
            Err(ApiError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of `GET /api/v1/users`. Retries transient failures.
    pub async fn list_users(&self, query: &ListQuery) -> Result<UserPage, ApiError> {
        let mut url = self.users_url.clone();
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("limit", &query.limit.unwrap_or(LIST_PAGE_SIZE).to_string());
            if let Some(cursor) = &query.cursor {
                pairs.append_pair("cursor", cursor);
            }
            if let Some(text) = &query.query {
                pairs.append_pair("query", text);
            }
            if query.include_anonymous {
                pairs.append_pair("include_anonymous", "true");
            }
        }
        self.read(url, "the user list").await
    }

    /// Every user matching `query` (all users when `None`), anonymous and restricted ones
    /// included, following `next_cursor` to the end. `on_page` sees the running count.
    pub async fn list_all_users(
        &self,
        query: Option<&str>,
        mut on_page: impl FnMut(usize),
    ) -> Result<Vec<User>, ApiError> {
        let mut all = Vec::new();
        self.for_each_page(query, |items| {
            all.extend(items);
            on_page(all.len());
        })
        .await?;
        Ok(all)
    }

    /// Like [`Client::list_all_users`], but hands each page to `page` and keeps nothing, so
    /// memory does not grow with the number of users.
    pub async fn for_each_page(
        &self,
        query: Option<&str>,
        mut page: impl FnMut(Vec<User>),
    ) -> Result<(), ApiError> {
        let mut cursor: Option<String> = None;
        loop {
            let answer = self
                .list_users(&ListQuery {
                    limit: Some(LIST_PAGE_SIZE),
                    cursor: cursor.clone(),
                    query: query.map(str::to_string),
                    include_anonymous: true,
                })
                .await?;
            page(answer.items);
            match answer.pagination.next_cursor {
                // A server that hands back the same cursor would loop forever.
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(()),
            }
        }
    }

    /// One cheap authenticated read (`GET /api/v1/users?limit=1`): are the credentials right
    /// and the project reachable? Writes nothing.
    pub async fn check_credentials(&self) -> Result<(), ApiError> {
        self.list_users(&ListQuery {
            limit: Some(1),
            ..ListQuery::default()
        })
        .await
        .map(|_| ())
    }

    /// A GET with retries: reads are safe to repeat, so ambiguous failures retry too.
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        url: Url,
        what: &str,
    ) -> Result<T, ApiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send::<()>(Method::GET, url.clone(), None).await {
                Ok(bytes) => return parse_json(&bytes, what),
                Err(e @ (ApiError::Transient { .. } | ApiError::Ambiguous { .. }))
                    if attempt < self.retry.max_attempts =>
                {
                    tracing::debug!(attempt, error = %e, "retrying {what}");
                    self.back_off(attempt, &e).await;
                    self.note_retry();
                }
                Err(ApiError::Transient {
                    unreachable: true,
                    message,
                    ..
                }) => {
                    return Err(fatal(
                        None,
                        None,
                        format!("could not reach Stack Auth after {attempt} attempts: {message}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One request: waits for the budget, sends, classifies the answer.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ApiError> {
        self.pacer.wait().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Err(transport_error(&method, &url, &e)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            // The status line arrived but the body did not: the request was processed.
            Err(e) if status.is_success() => {
                return Err(ApiError::Ambiguous {
                    message: format!("{method} {url}: the answer was cut off: {}", chain(&e)),
                });
            }
            Err(_) => Default::default(),
        };
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(classify(status, &headers, &bytes, &url))
        }
    }
}

fn fatal(status: Option<u16>, code: Option<String>, message: String) -> ApiError {
    ApiError::Fatal {
        status,
        code,
        message,
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        // A 2xx that is not the API's JSON: a proxy or a web site, not Stack Auth.
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        fatal(
            None,
            None,
            format!(
                "Stack Auth answered {what} with something that is not the API's JSON ({e}): {:?}; is STACK_AUTH_API_URL the API base (e.g. {DEFAULT_API_URL})?",
                mask_hashes_in(&text)
            ),
        )
    })
}

fn transport_error(method: &Method, url: &Url, e: &reqwest::Error) -> ApiError {
    let message = format!("{method} {url}: {}", chain(e));
    if e.is_connect() {
        // Never reached the server: safe to repeat, even a create.
        ApiError::Transient {
            status: None,
            retry_after: None,
            unreachable: true,
            message,
        }
    } else if e.is_builder() {
        fatal(None, None, message)
    } else {
        // Timeout, reset, closed: the server may have acted on it.
        ApiError::Ambiguous { message }
    }
}

/// The error and its causes, `: `-separated (reqwest's top level says only "error sending
/// request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Known-error body: `{code, details, error}`.
#[derive(Deserialize)]
struct KnownErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    error: Option<String>,
}

/// Turns a non-2xx answer into an [`ApiError`].
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], url: &Url) -> ApiError {
    let header_code = headers
        .get(KNOWN_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let parsed: Option<KnownErrorBody> = serde_json::from_slice(body).ok();
    let code = header_code.or_else(|| parsed.as_ref().and_then(|p| p.code.clone()));
    let details = parsed.as_ref().and_then(|p| p.details.clone());
    let text = match parsed.as_ref().and_then(|p| p.error.clone()) {
        Some(message) => message,
        None => {
            let raw = String::from_utf8_lossy(&body[..body.len().min(500)]);
            let raw = raw.trim();
            if raw.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no message")
                    .to_string()
            } else {
                raw.to_string()
            }
        }
    };
    let text = mask_hashes_in(&text);
    let n = status.as_u16();
    let described = match &code {
        Some(code) => format!("{n} {code}: {text}"),
        None => format!("{n}: {text}"),
    };
    let is_fatal_code = code.as_deref().is_some_and(|c| FATAL_CODES.contains(&c));
    if n == 401 || n == 403 || is_fatal_code {
        return fatal(
            Some(n),
            code,
            format!(
                "Stack Auth refused the credentials ({described}): check STACK_AUTH_PROJECT_ID and STACK_AUTH_SECRET_KEY (a server key, ssk_...) for this project"
            ),
        );
    }
    if n == 404 && code.is_none() {
        return fatal(
            Some(n),
            None,
            format!(
                "{url} does not exist ({described}): is STACK_AUTH_API_URL the API base (e.g. {DEFAULT_API_URL})?"
            ),
        );
    }
    if n == 429 || n == 408 || status.is_server_error() {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        return ApiError::Transient {
            status: Some(n),
            retry_after,
            unreachable: false,
            message: described,
        };
    }
    ApiError::Rejected {
        status: n,
        code,
        details,
        message: described,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("http://127.0.0.1:1/api/v1/users").unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn known_errors_are_classified_by_header_and_code() {
        let e = classify(
            StatusCode::CONFLICT,
            &headers(&[("x-stack-known-error", "USER_EMAIL_ALREADY_EXISTS")]),
            br#"{"code":"USER_EMAIL_ALREADY_EXISTS","details":{"email":"a@b.example","would_work_if_email_was_verified":false},"error":"A user with email a@b.example already exists."}"#,
            &url(),
        );
        let ApiError::Rejected {
            status,
            code,
            details,
            message,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(*status, 409);
        assert_eq!(code.as_deref(), Some(USER_EMAIL_ALREADY_EXISTS));
        assert_eq!(details.as_ref().unwrap()["email"], "a@b.example");
        assert!(message.contains("already exists"), "{message}");

        let bad_key = classify(
            StatusCode::UNAUTHORIZED,
            &headers(&[("x-stack-known-error", "INVALID_SECRET_SERVER_KEY")]),
            br#"{"code":"INVALID_SECRET_SERVER_KEY","error":"The secret server key is not valid for the project."}"#,
            &url(),
        );
        assert!(bad_key.is_fatal(), "{bad_key:?}");
        assert!(bad_key.to_string().contains("STACK_AUTH_SECRET_KEY"));
        assert!(classify(StatusCode::FORBIDDEN, &HeaderMap::new(), b"", &url()).is_fatal());
        let header_400 = classify(
            StatusCode::BAD_REQUEST,
            &headers(&[("x-stack-known-error", "ACCESS_TYPE_WITHOUT_PROJECT_ID")]),
            br#"{"code":"ACCESS_TYPE_WITHOUT_PROJECT_ID","error":"..."}"#,
            &url(),
        );
        assert!(header_400.is_fatal());
        // An HTML 404 from a web server: not the API.
        assert!(classify(StatusCode::NOT_FOUND, &HeaderMap::new(), b"<html>", &url()).is_fatal());
        let not_found = classify(
            StatusCode::NOT_FOUND,
            &headers(&[("x-stack-known-error", "USER_NOT_FOUND")]),
            br#"{"code":"USER_NOT_FOUND","error":"User not found."}"#,
            &url(),
        );
        assert!(matches!(not_found, ApiError::Rejected { status: 404, .. }));
    }

    #[test]
    fn plain_text_400s_are_per_user_and_keep_the_servers_words() {
        let e = classify(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            b"Invalid password hash",
            &url(),
        );
        assert_eq!(
            e,
            ApiError::Rejected {
                status: 400,
                code: None,
                details: None,
                message: "400: Invalid password hash".into()
            }
        );
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient_with_retry_after() {
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "3")]),
            b"",
            &url(),
        );
        assert!(
            matches!(e, ApiError::Transient { status: Some(429), retry_after: Some(d), .. } if d == Duration::from_secs(3)),
            "{e:?}"
        );
        let e = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            b"",
            &url(),
        );
        assert!(matches!(
            e,
            ApiError::Transient {
                retry_after: None,
                ..
            }
        ));
        let e = classify(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"upstream",
            &url(),
        );
        assert!(matches!(
            e,
            ApiError::Transient {
                status: Some(502),
                ..
            }
        ));
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn back_off_doubles_with_jitter_and_honours_retry_after_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        for attempt in 1..=6 {
            let full = (Duration::from_millis(100) * (1 << (attempt - 1))).min(p.cap);
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..50 {
                let d = p.delay(attempt, None);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
                seen.insert(d);
            }
            assert!(seen.len() > 10, "no jitter: {seen:?}");
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn hashes_never_show_in_printable_forms() {
        let hash = "$2a$10$Bkh0efqmLf1BxI9pMUn0I..mGw1JZHrBQHCfgIBXsu/IEvBWl.TdG";
        let body = CreateUser {
            primary_email: Some("a@b.example".into()),
            password_hash: Some(hash.into()),
            ..CreateUser::default()
        };
        let masked = serde_json::to_string(&body.masked()).unwrap();
        assert!(!masked.contains("Bkh0"), "{masked}");
        assert!(masked.contains("$2a$10$********"), "{masked}");
        assert!(!format!("{body:?}").contains("Bkh0"));
        let text = format!("rejected {hash}, and $2 alone, and $2b$04$short");
        let out = mask_hashes_in(&text);
        assert!(!out.contains("Bkh0"), "{out}");
        assert!(
            out.contains("$2 alone") && out.contains("$2b$04$short"),
            "{out}"
        );
        let full = serde_json::to_value(&body).unwrap();
        assert_eq!(full["password_hash"], hash);
        assert!(
            full.get("oauth_providers").is_none(),
            "empty fields are not sent"
        );
    }

    #[test]
    fn credentials_are_checked_and_the_key_is_never_in_debug() {
        let c = Credentials::new(
            "https://api.stack-auth.com/",
            "p1",
            "ssk_unit_test_secret_1234",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("ssk_unit_test_secret_1234"));
        assert_eq!(
            redact::scrub("key ssk_unit_test_secret_1234"),
            format!("key {}", redact::MASK)
        );
        assert!(Credentials::new("ftp://x", "p", "k").is_err());
        assert!(Credentials::new("https://x", "", "ssk_abc").is_err());
        assert!(Credentials::new("https://x", "p", " ").is_err());
        let client = Client::new(
            &Credentials::new("http://localhost:8102/prefix/", "p", "ssk_abcd").unwrap(),
            &ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(
            client.users_url.as_str(),
            "http://localhost:8102/prefix/api/v1/users"
        );
        assert!(!format!("{client:?}").contains("ssk_abcd"));
    }

    #[tokio::test]
    async fn the_pacer_spaces_requests_and_pauses_everyone() {
        let pacer = Pacer::new(Duration::from_millis(20));
        let start = Instant::now();
        for _ in 0..4 {
            pacer.wait().await;
        }
        assert!(start.elapsed() >= Duration::from_millis(60));
        pacer.pause(Duration::from_millis(80)).await;
        let before = Instant::now();
        pacer.wait().await;
        assert!(before.elapsed() >= Duration::from_millis(70));
    }
}
