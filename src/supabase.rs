//! Facts about the Supabase-specific part of the source: `auth.users` and `auth.identities`.

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::GenericClient;

/// A bcrypt hash in Modular Crypt Format, as Stack Auth accepts it (`$2a$`, `$2b$`, `$2y$`).
pub const BCRYPT_PATTERN: &str = r"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$";

/// Identity providers that are not OAuth providers (SAML SSO identities, `sso:<uuid>`, are not
/// either: there is no OAuth account to carry).
pub const NON_OAUTH_PROVIDERS: &[&str] = &["email", "phone"];

/// How the source's users break down, so the operator sees who needs attention before the
/// window. Categories overlap (a banned user can also have a password).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuthUserStats {
    pub total: i64,
    pub with_bcrypt_password: i64,
    pub with_oauth_identity: i64,
    pub without_email: i64,
    pub anonymous: i64,
    pub sso: i64,
    /// `banned_until` in the future.
    pub banned: i64,
    /// `deleted_at` set.
    pub soft_deleted: i64,
}

/// Counts `auth.users` by category, or `None` when the database has no `auth.users`.
///
/// Older GoTrue versions lack `is_anonymous`, `is_sso_user` or `deleted_at`; a missing column
/// counts as "no user has it" rather than failing.
pub async fn auth_user_stats(client: &impl GenericClient) -> Result<Option<AuthUserStats>> {
    let columns: Vec<String> = client
        .query(
            "SELECT a.attname::text FROM pg_attribute a \
             WHERE a.attrelid = to_regclass('auth.users') AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await
        .context("could not read the columns of auth.users")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let has = |c: &str| columns.iter().any(|x| x == c);
    let flag = |c: &str| {
        if has(c) {
            format!("count(*) FILTER (WHERE u.{c})")
        } else {
            "0::int8".to_string()
        }
    };
    let deleted = if has("deleted_at") {
        "count(*) FILTER (WHERE u.deleted_at IS NOT NULL)"
    } else {
        "0::int8"
    };
    let identities = client
        .query_one("SELECT to_regclass('auth.identities') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    let oauth = if identities {
        "count(*) FILTER (WHERE EXISTS (SELECT 1 FROM auth.identities i \
          WHERE i.user_id = u.id AND i.provider <> ALL ($2::text[]) \
          AND i.provider NOT LIKE 'sso:%'))"
    } else {
        "0::int8 + 0 * cardinality($2::text[])"
    };
    let sql = format!(
        "SELECT count(*), \
                count(*) FILTER (WHERE u.encrypted_password ~ $1), \
                {oauth}, \
                count(*) FILTER (WHERE u.email IS NULL OR u.email = ''), \
                {}, {}, \
                count(*) FILTER (WHERE u.banned_until > now()), \
                {deleted} \
         FROM auth.users u",
        flag("is_anonymous"),
        flag("is_sso_user"),
    );
    let providers: Vec<&str> = NON_OAUTH_PROVIDERS.to_vec();
    let row = client
        .query_one(sql.as_str(), &[&BCRYPT_PATTERN, &providers])
        .await
        .context("could not count auth.users")?;
    Ok(Some(AuthUserStats {
        total: row.get(0),
        with_bcrypt_password: row.get(1),
        with_oauth_identity: row.get(2),
        without_email: row.get(3),
        anonymous: row.get(4),
        sso: row.get(5),
        banned: row.get(6),
        soft_deleted: row.get(7),
    }))
}
