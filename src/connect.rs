//! Connections to the source (Supabase) and target (self-hosted) databases.
//!
//! Why not hand the URL to tokio-postgres as is: it does not know `sslmode=verify-ca`,
//! `verify-full` or `sslrootcert`, it would print the password in its `Debug` output, and its
//! errors do not say which of the two databases failed. So URLs are parsed here into a [`DbUrl`]
//! whose `Display` is the redacted URL, TLS is set up from the libpq-style parameters, the
//! transaction pooler is refused, and connection errors name the side, host, port, database and
//! user with the server's reason and a next step.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::Client;
use tokio_postgres::config::SslMode as PgSslMode;
use tracing::{debug, info, warn};

use crate::redact;

/// Port of Supabase's transaction-mode pooler (PgBouncer/Supavisor).
pub const TRANSACTION_POOLER_PORT: u16 = 6543;

/// Which database a connection is for; used in every message about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The Supabase database (`SUPABASE_DB_URL`): always read-only.
    Source,
    /// The self-hosted database (`DATABASE_URL`).
    Target,
}

impl Side {
    pub fn env_var(self) -> &'static str {
        match self {
            Side::Source => "SUPABASE_DB_URL",
            Side::Target => "DATABASE_URL",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// libpq's `sslmode` values. `allow` is accepted as `prefer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    /// Encrypt, but do not verify the server certificate.
    Require,
    /// Verify that the certificate chains to `sslrootcert`, not the host name.
    VerifyCa,
    /// Verify the chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
            ),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the root certificate for `verify-ca`/`verify-full` comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

/// A parsed `postgresql://` URL. Holds the password but never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub side: Side,
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<RootCert>,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    /// `pgbouncer=true`, as Prisma-style Supabase URLs for the pooler carry.
    pub pgbouncer_flag: bool,
}

/// Query parameters accepted in a URL; anything else is rejected rather than silently ignored.
const KNOWN_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "application_name",
    "pgbouncer",
];

impl DbUrl {
    /// Parses a libpq-style URL (`postgresql://user:password@host:port/database?sslmode=...`).
    /// The password is registered with [`redact`] before anything can fail, so no error that
    /// follows can leak it.
    pub fn parse(side: Side, text: &str) -> Result<DbUrl> {
        let text = text.trim();
        if let Some(raw) = raw_password(text) {
            redact::register(raw);
        }
        let shown = redact_url(text);
        let url = url::Url::parse(text).map_err(|e| {
            anyhow!(
                "the {side} URL ({}) is not a valid URL: {e}; expected \
                 postgresql://USER:PASSWORD@HOST:5432/DATABASE",
                shown
            )
        })?;
        if url.scheme() != "postgresql" && url.scheme() != "postgres" {
            bail!(
                "the {side} URL ({shown}) must start with postgresql:// (it starts with {}://)",
                url.scheme()
            );
        }
        let password = match url.password() {
            Some(p) => Some(decode(p, side, "password")?),
            None => None,
        };
        if let Some(p) = &password {
            redact::register(p);
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => bail!("the {side} URL ({shown}) has no host"),
        };
        if host.contains(',') {
            bail!("the {side} URL ({shown}) lists several hosts; fmig connects to exactly one");
        }
        let user = decode(url.username(), side, "user name")?;
        if user.is_empty() {
            bail!(
                "the {side} URL ({shown}) has no user name: use postgresql://USER:PASSWORD@HOST/DATABASE"
            );
        }
        let database = decode(url.path().trim_start_matches('/'), side, "database name")?;
        let database = if database.is_empty() {
            user.clone()
        } else {
            database
        };

        let mut parsed = DbUrl {
            side,
            port: url.port().unwrap_or(5432),
            host,
            user,
            password,
            database,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: None,
            application_name: None,
            pgbouncer_flag: false,
        };
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => {
                    parsed.sslmode = SslMode::parse(&value)
                        .with_context(|| format!("in the {side} URL ({shown})"))?
                }
                "sslrootcert" if value == "system" => parsed.sslrootcert = Some(RootCert::System),
                "sslrootcert" => parsed.sslrootcert = Some(RootCert::File(value.as_ref().into())),
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        anyhow!(
                            "connect_timeout={value:?} in the {side} URL is not a number of seconds"
                        )
                    })?;
                    parsed.connect_timeout = Some(Duration::from_secs(secs.max(1)));
                }
                "application_name" => parsed.application_name = Some(value.into_owned()),
                "pgbouncer" => parsed.pgbouncer_flag = value == "true",
                other => bail!(
                    "the {side} URL ({shown}) has an unsupported parameter {other:?}; \
                     supported: {}",
                    KNOWN_PARAMS.join(", ")
                ),
            }
        }
        Ok(parsed)
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether this URL goes through Supabase's transaction pooler.
    pub fn is_transaction_pooler(&self) -> bool {
        self.port == TRANSACTION_POOLER_PORT || self.pgbouncer_flag
    }

    /// `host=… port=… database=… user=…` for messages.
    pub fn describe(&self) -> String {
        format!(
            "host={} port={} database={} user={} sslmode={}",
            self.host,
            self.port,
            self.database,
            self.user,
            self.sslmode.as_str()
        )
    }

    /// The direct-connection URL an operator should use instead of the pooler, with the
    /// password left as a placeholder.
    pub fn direct_connection_hint(&self) -> String {
        // Supavisor URLs look like postgres.<ref>@aws-0-<region>.pooler.supabase.com; the direct
        // host of the same project is db.<ref>.supabase.co with the plain `postgres` user.
        if let Some(project_ref) = self.user.strip_prefix("postgres.")
            && self.host.ends_with(".pooler.supabase.com")
        {
            return format!(
                "postgresql://postgres:<password>@db.{project_ref}.supabase.co:5432/{}",
                self.database
            );
        }
        "postgresql://postgres:<password>@db.<project-ref>.supabase.co:5432/postgres".to_string()
    }
}

impl fmt::Display for DbUrl {
    /// The URL with the password replaced by a mask.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql://{}", self.user)?;
        if self.password.is_some() {
            write!(f, ":{}", redact::MASK)?;
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "@{host}:{}/{}", self.port, self.database)?;
        write!(f, "?sslmode={}", self.sslmode.as_str())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

fn decode(text: &str, side: Side, what: &str) -> Result<String> {
    percent_decode(text)
        .ok_or_else(|| anyhow!("the {what} in the {side} URL is not valid percent-encoded UTF-8"))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The password exactly as it is written in a URL's text, if any.
fn raw_password(text: &str) -> Option<&str> {
    let rest = text.split_once("://")?.1;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    Some(password)
}

/// Masks the password of a URL given as text, whether or not the URL is otherwise valid.
pub fn redact_url(text: &str) -> String {
    match raw_password(text) {
        Some(password) if !password.is_empty() => {
            let start = password.as_ptr() as usize - text.as_ptr() as usize;
            format!(
                "{}{}{}",
                &text[..start],
                redact::MASK,
                &text[start + password.len()..]
            )
        }
        _ => text.to_string(),
    }
}

/// Connection settings shared by every subcommand.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// How long one attempt may take, and how long transient failures are retried.
    pub connect_timeout: Duration,
    /// Let a transaction-pooler URL through (`--allow-pooler`).
    pub allow_pooler: bool,
}

/// Session settings that make values and text forms independent of server defaults: UTC,
/// ISO dates, PostgreSQL-style intervals, floats with full precision, and backslashes that are
/// plain characters in '...' literals (what `quote_literal` and the mapping's expression check
/// assume).
const SESSION_SETUP: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET client_encoding = 'UTF8'; \
     SET standard_conforming_strings = on";

/// Opens a connection and drives it on a background task. The source session is made read-only
/// (`default_transaction_read_only`) before it is returned, so no statement fmig sends can write
/// to Supabase.
pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<Client> {
    let side = url.side;
    if url.is_transaction_pooler() && !options.allow_pooler {
        bail!(
            "the {side} URL ({url}) points at Supabase's transaction pooler (port {}{}), which \
             cannot keep a snapshot or session settings across statements, so a migration through \
             it is not consistent.\n  Use the direct connection instead: {}\n  (Supabase \
             dashboard > Connect > Direct connection; the session pooler on port 5432 works too.) \
             --allow-pooler skips this check if you know the port is not a transaction pooler.",
            url.port,
            if url.pgbouncer_flag {
                ", pgbouncer=true"
            } else {
                ""
            },
            url.direct_connection_hint()
        );
    }
    let tls = tls_connector(url)?;
    let mut config = tokio_postgres::Config::new();
    let timeout = url.connect_timeout.unwrap_or(options.connect_timeout);
    config
        .host(&url.host)
        .port(url.port)
        .user(&url.user)
        .dbname(&url.database)
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .application_name(url.application_name.as_deref().unwrap_or("fmig"))
        .ssl_mode(match url.sslmode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
    if let Some(password) = &url.password {
        config.password(password);
    }

    // Retry only what a moment may fix (refused, reset, timed out), with doubling pauses,
    // until the timeout has passed; authentication and TLS failures are final at once.
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    let (client, connection) = loop {
        match config.connect(tls.clone()).await {
            Ok(pair) => break pair,
            Err(err) if is_transient(&err) && started.elapsed() + pause < timeout => {
                debug!(%side, error = %err, "connection attempt failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(connect_error(url, &err, timeout)),
        }
    };
    let host = url.host.clone();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            warn!(%side, %host, error = %redact::scrub(&err.to_string()), "database connection ended with an error");
        }
    });

    let mut setup = SESSION_SETUP.to_string();
    if side == Side::Source {
        setup.push_str("; SET default_transaction_read_only = on");
    }
    client
        .batch_execute(&setup)
        .await
        .with_context(|| format!("could not prepare the {side} session ({})", url.describe()))?;
    // Commands open many sessions (a pair per table in verify); the console hears of the first
    // per side, the log (at debug) of every one.
    static ANNOUNCED: std::sync::Mutex<Vec<Side>> = std::sync::Mutex::new(Vec::new());
    let first = {
        let mut announced = ANNOUNCED.lock().unwrap_or_else(|e| e.into_inner());
        let first = !announced.contains(&side);
        if first {
            announced.push(side);
        }
        first
    };
    if first {
        info!(%side, host = %url.host, port = url.port, database = %url.database, "connected");
    } else {
        debug!(%side, host = %url.host, port = url.port, database = %url.database, "connected");
    }
    Ok(client)
}

fn is_transient(err: &tokio_postgres::Error) -> bool {
    // 57P03: "the database system is starting up / shutting down", a restart in progress.
    if err
        .as_db_error()
        .is_some_and(|db| db.code().code() == "57P03")
    {
        return true;
    }
    find_io_error(err).is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::TimedOut
        )
    })
}

/// Whether an error means the connection itself is gone (the server restarted, shut down or
/// crashed, or the network dropped) rather than that the server refused a statement: such a
/// run is worth repeating once the server is back, unchanged.
pub fn is_connection_lost(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    if let Some(db) = err.as_db_error() {
        // admin_shutdown, crash_shutdown, cannot_connect_now, and class 08 (connection
        // exception).
        let code = db.code().code();
        return matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08");
    }
    find_io_error(err).is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected
                | io::ErrorKind::TimedOut
        )
    })
}

/// When a lost connection (see [`is_connection_lost`]) caused `err`, says so first, then the
/// original message, then `next_step`; any other error is returned unchanged.
pub fn explain_lost_connection(err: anyhow::Error, side: Side, next_step: &str) -> anyhow::Error {
    let lost = err.chain().any(|cause| {
        cause
            .downcast_ref::<tokio_postgres::Error>()
            .is_some_and(is_connection_lost)
    });
    if !lost {
        return err;
    }
    anyhow!(
        "the connection to the {side} database was lost (the server restarted or shut down, or \
         the network dropped): {err:#}\n  next step: {next_step}"
    )
}

fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// Turns a connection failure into a message that names the database and says what to do.
fn connect_error(url: &DbUrl, err: &tokio_postgres::Error, timeout: Duration) -> anyhow::Error {
    let side = url.side;
    let var = side.env_var();
    let (reason, hint) = if let Some(db) = err.as_db_error() {
        let hint = match db.code().code() {
            "28P01" => format!("check the password in {var}"),
            "28000" => format!("the server rejected this user or host: check the user in {var} and the server's pg_hba.conf"),
            "3D000" => format!("check the database name in {var}"),
            "53300" => "the server has no free connection slots: close other sessions or raise max_connections".to_string(),
            _ => format!("check {var}"),
        };
        (
            format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            hint,
        )
    } else {
        let chain = error_chain(err);
        let hint = if let Some(io) = find_io_error(err) {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => format!(
                    "nothing accepts connections at {}:{}: check the host and port in {var} and that the server is running",
                    url.host, url.port
                ),
                io::ErrorKind::TimedOut => format!(
                    "no answer within {}s: check the host, the port, and any firewall between here and {}",
                    timeout.as_secs(),
                    url.host
                ),
                _ => format!("check the host and port in {var}"),
            }
        } else if chain.contains("password missing") {
            format!(
                "the server asks for a password but {var} has none: use postgresql://USER:PASSWORD@HOST/DATABASE"
            )
        } else if chain.contains("certificate") || chain.contains("TLS") || chain.contains("tls") {
            "the server's certificate was not accepted: check sslrootcert (the CA that signed the server certificate) and that the host name matches the certificate, or use sslmode=require to encrypt without verifying".to_string()
        } else if chain.contains("server does not support TLS") {
            "the server does not offer TLS: use sslmode=prefer or sslmode=disable on a trusted network".to_string()
        } else if chain.contains("timeout") {
            format!(
                "no answer within {}s: check the host, the port and any firewall",
                timeout.as_secs()
            )
        } else {
            format!("check {var}")
        };
        (chain, hint)
    };
    anyhow!(
        "could not connect to the {side} database ({}): {}\n  next step: {hint}",
        url.describe(),
        redact::scrub(&reason)
    )
}

/// `error: cause: cause` on one line, skipping causes that repeat the previous text.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// Builds the TLS connector that `sslmode` asks for.
fn tls_connector(url: &DbUrl) -> Result<MakeTlsConnector> {
    let side = url.side;
    let mut builder = TlsConnector::builder();
    match url.sslmode {
        // Like libpq: prefer and require encrypt without checking who is on the other end.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = match &url.sslrootcert {
                Some(root) => root.clone(),
                None => match default_root_cert() {
                    Some(path) => RootCert::File(path),
                    None => bail!(
                        "sslmode={} in the {side} URL needs the certificate of the authority that \
                         signed the server's certificate, and none was given.\n  next step: add \
                         sslrootcert=/path/to/ca.crt to {} (for Supabase: download the CA from \
                         Database settings > SSL configuration), or sslrootcert=system to trust \
                         the operating system's CAs, or use sslmode=require to encrypt without \
                         verifying",
                        url.sslmode.as_str(),
                        side.env_var()
                    ),
                },
            };
            if let RootCert::File(path) = &root {
                builder.disable_built_in_roots(true);
                for cert in read_certificates(path, side)? {
                    builder.add_root_certificate(cert);
                }
            }
            if url.sslmode == SslMode::VerifyCa {
                builder.danger_accept_invalid_hostnames(true);
            }
        }
    }
    let connector = builder
        .build()
        .with_context(|| format!("could not set up TLS for the {side} connection"))?;
    Ok(MakeTlsConnector::new(connector))
}

/// libpq's default root certificate location.
fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql/root.crt");
    path.is_file().then_some(path)
}

/// Every PEM certificate in a file (CA bundles hold several).
fn read_certificates(path: &Path, side: Side) -> Result<Vec<Certificate>> {
    let pem = std::fs::read_to_string(path).with_context(|| {
        format!(
            "could not read sslrootcert {} (from the {side} URL)",
            path.display()
        )
    })?;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let certs = pem
        .match_indices(BEGIN)
        .map(|(start, _)| {
            let end = pem[start..]
                .find("-----END CERTIFICATE-----")
                .map(|e| start + e + "-----END CERTIFICATE-----".len())
                .unwrap_or(pem.len());
            Certificate::from_pem(&pem.as_bytes()[start..end]).with_context(|| {
                format!(
                    "sslrootcert {} holds an invalid certificate",
                    path.display()
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if certs.is_empty() {
        bail!(
            "sslrootcert {} (from the {side} URL) contains no PEM certificate",
            path.display()
        );
    }
    Ok(certs)
}

/// How fmig words a PostgreSQL error: the server's message, its hint and SQLSTATE; for a
/// client-side error (I/O, TLS, protocol), its text with every cause after it.
pub fn server_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            text.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            text
        }
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_supabase_url_and_hides_the_password() {
        let url = DbUrl::parse(
            Side::Source,
            "postgresql://postgres:p%40ss%3Aword-x1@db.abcd.supabase.co:5432/postgres?sslmode=require",
        )
        .unwrap();
        assert_eq!(url.host, "db.abcd.supabase.co");
        assert_eq!(url.port, 5432);
        assert_eq!(url.user, "postgres");
        assert_eq!(url.password.as_deref(), Some("p@ss:word-x1"));
        assert_eq!(url.database, "postgres");
        assert_eq!(url.sslmode, SslMode::Require);
        let shown = format!("{url} {url:?} {}", url.describe());
        assert!(!shown.contains("p@ss"), "{shown}");
        assert!(!shown.contains("p%40ss"), "{shown}");
        assert!(shown.contains(redact::MASK));
    }

    #[test]
    fn defaults_and_parameters() {
        let url = DbUrl::parse(Side::Target, "postgres://app@localhost/fresh").unwrap();
        assert_eq!(url.port, 5432);
        assert_eq!(url.sslmode, SslMode::Prefer);
        assert!(!url.has_password());
        let url = DbUrl::parse(
            Side::Target,
            "postgresql://u:p@[::1]:6000/d?sslmode=verify-full&sslrootcert=/tmp/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.sslmode, SslMode::VerifyFull);
        assert_eq!(url.sslrootcert, Some(RootCert::File("/tmp/ca.pem".into())));
        assert_eq!(url.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(
            url.to_string(),
            format!(
                "postgresql://u:{}@[::1]:6000/d?sslmode=verify-full",
                redact::MASK
            )
        );
    }

    #[test]
    fn bad_urls_are_explained_without_the_password() {
        for (text, fragment) in [
            (
                "mysql://u:hunter2-secret@h/d",
                "must start with postgresql://",
            ),
            (
                "postgresql://u:hunter2-secret@h/d?sslmode=maybe",
                "unknown sslmode",
            ),
            (
                "postgresql://u:hunter2-secret@h/d?foo=bar",
                "unsupported parameter",
            ),
            ("postgresql://u:hunter2-secret@h:99999/d", "not a valid URL"),
            ("postgresql://:hunter2-secret@h/d", "no user name"),
        ] {
            let err = format!("{:#}", DbUrl::parse(Side::Source, text).unwrap_err());
            assert!(err.contains(fragment), "{text}: {err}");
            assert!(!err.contains("hunter2-secret"), "{text}: {err}");
        }
    }

    #[test]
    fn pooler_urls_are_recognised_with_a_direct_url_hint() {
        let url = DbUrl::parse(
            Side::Source,
            "postgresql://postgres.abcdefgh:pw-secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
        )
        .unwrap();
        assert!(url.is_transaction_pooler());
        assert_eq!(
            url.direct_connection_hint(),
            "postgresql://postgres:<password>@db.abcdefgh.supabase.co:5432/postgres"
        );
        let session_pooler = DbUrl::parse(
            Side::Source,
            "postgresql://postgres.abcdefgh:pw@aws-0-eu-central-1.pooler.supabase.com:5432/postgres",
        )
        .unwrap();
        assert!(!session_pooler.is_transaction_pooler());
        let prisma =
            DbUrl::parse(Side::Source, "postgresql://u:p@h:5432/d?pgbouncer=true").unwrap();
        assert!(prisma.is_transaction_pooler());
    }

    #[test]
    fn redact_url_works_on_text_that_does_not_parse() {
        assert_eq!(
            redact_url("postgresql://u:se:cr@t@host:x/d"),
            format!("postgresql://u:{}@host:x/d", redact::MASK)
        );
        assert_eq!(redact_url("postgresql://u@host/d"), "postgresql://u@host/d");
    }
}
