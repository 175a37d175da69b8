//! `fmig verify --sign-in accounts.csv`: signs in with real accounts through Stack Auth's client
//! password sign-in, as the application's users will the morning after: the go/no-go's "sign
//! in with a migrated account" check.
//!
//! The file holds `email,password` lines (a header first; fields may be CSV-quoted) and must
//! be private (mode 0600): it holds passwords. Each password is registered with
//! [`crate::redact`] before anything is sent, so none can reach a log line or an error.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::redact;

/// One account's sign-in.
#[derive(Debug, Serialize)]
pub struct SignIn {
    pub email: String,
    /// The password worked (a TOTP user's included: Stack Auth then asks for the code).
    pub ok: bool,
    /// `signed in`, `password accepted, TOTP required`, or why not.
    pub outcome: String,
    /// Stack Auth's error code when it refused.
    pub code: Option<String>,
}

/// The client settings the check needs.
pub struct ClientSettings<'a> {
    pub api_url: &'a str,
    pub project_id: &'a str,
    pub publishable_client_key: &'a str,
}

/// Signs in with every account of `path`, one after the other.
pub async fn check(path: &Path, settings: &ClientSettings<'_>) -> Result<Vec<SignIn>> {
    let accounts = read_accounts(path)?;
    if settings.project_id.trim().is_empty() || settings.publishable_client_key.trim().is_empty() {
        bail!(
            "--sign-in needs the project id (STACK_AUTH_PROJECT_ID) and the publishable client \
             key (STACK_AUTH_PUBLISHABLE_CLIENT_KEY, pck_..., Stack Auth dashboard > API keys)"
        );
    }
    redact::register(settings.publishable_client_key.trim());
    let url = format!(
        "{}/api/v1/auth/password/sign-in",
        settings.api_url.trim_end_matches('/')
    );
    let http = reqwest::Client::builder()
        .user_agent(concat!("fmig/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| anyhow!("could not set up the HTTP client: {e}"))?;
    let mut results = Vec::new();
    for (email, password) in accounts {
        let sent = http
            .post(&url)
            .header("x-stack-access-type", "client")
            .header("x-stack-project-id", settings.project_id.trim())
            .header(
                "x-stack-publishable-client-key",
                settings.publishable_client_key.trim(),
            )
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await;
        results.push(match sent {
            Err(e) => SignIn {
                email,
                ok: false,
                outcome: format!(
                    "no answer from Stack Auth: {}",
                    redact::scrub(&e.to_string())
                ),
                code: None,
            },
            Ok(response) => {
                let status = response.status();
                let known = response
                    .headers()
                    .get("x-stack-known-error")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let text = response.text().await.unwrap_or_default();
                outcome(email, status.as_u16(), known, &text)
            }
        });
    }
    Ok(results)
}

/// What an answer says about one account.
fn outcome(email: String, status: u16, known: Option<String>, body: &str) -> SignIn {
    if (200..300).contains(&status) {
        return SignIn {
            email,
            ok: true,
            outcome: "signed in".into(),
            code: None,
        };
    }
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let code = known.or_else(|| {
        parsed
            .as_ref()
            .and_then(|v| v["code"].as_str())
            .map(str::to_string)
    });
    if code.as_deref() == Some("MULTI_FACTOR_AUTHENTICATION_REQUIRED") {
        return SignIn {
            email,
            ok: true,
            outcome: "password accepted, TOTP required".into(),
            code,
        };
    }
    let message = parsed
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(200).collect());
    SignIn {
        email,
        ok: false,
        outcome: format!("refused (HTTP {status}): {}", redact::scrub(&message)),
        code,
    }
}

/// The accounts file: private, `email,password` after a header line.
fn read_accounts(path: &Path) -> Result<Vec<(String, String)>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("could not read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} holds passwords but others may read it (mode {:o}); run chmod 600 {} and \
                 try again",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read {}", path.display()))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if csv_fields(header) == ["email", "password"] => {}
        _ => bail!(
            "{}: the first line must be the header email,password",
            path.display()
        ),
    }
    let mut accounts = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line);
        let [email, password] = fields.as_slice() else {
            // Never the line itself: it holds a password.
            bail!(
                "{} line {}: expected two fields, email and password (quote a password that \
                 holds a comma)",
                path.display(),
                i + 1
            );
        };
        redact::register(password);
        accounts.push((email.trim().to_string(), password.clone()));
    }
    if accounts.is_empty() {
        bail!("{} lists no account", path.display());
    }
    Ok(accounts)
}

/// The fields of one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_rfc_4180_quoting() {
        assert_eq!(csv_fields("a@x.example,secret"), ["a@x.example", "secret"]);
        assert_eq!(
            csv_fields(r#"a@x.example,"p,w ""quoted""""#),
            ["a@x.example", r#"p,w "quoted""#]
        );
    }

    #[test]
    fn answers_become_outcomes() {
        let ok = outcome("a".into(), 200, None, "{}");
        assert!(ok.ok && ok.outcome == "signed in");
        let totp = outcome(
            "a".into(),
            400,
            Some("MULTI_FACTOR_AUTHENTICATION_REQUIRED".into()),
            r#"{"code":"MULTI_FACTOR_AUTHENTICATION_REQUIRED"}"#,
        );
        assert!(totp.ok && totp.outcome == "password accepted, TOTP required");
        let wrong = outcome(
            "a".into(),
            400,
            None,
            r#"{"code":"EMAIL_PASSWORD_MISMATCH","error":"Wrong e-mail or password."}"#,
        );
        assert!(!wrong.ok);
        assert_eq!(wrong.code.as_deref(), Some("EMAIL_PASSWORD_MISMATCH"));
        assert!(wrong.outcome.contains("Wrong e-mail or password."));
    }
}
