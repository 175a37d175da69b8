//! Secrets never reach the console or the log file.
//!
//! Code that formats a connection URL uses [`crate::connect::DbUrl`]'s redacted `Display`, which
//! never holds the password in the first place. This module is the second line of defence:
//! every secret fmig learns (database passwords, in raw and percent-encoded form, the Stack Auth
//! server key) is registered here, and the log writers and the final error report pass their
//! text through [`scrub`], so a secret echoed back by a server or a library error is still masked.

use std::borrow::Cow;
use std::sync::RwLock;

/// What a masked secret looks like in output.
pub const MASK: &str = "********";

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers a secret so that [`scrub`] masks it. Very short values are not registered: masking
/// every "a" in the log would make it unreadable, and a 1-3 character password is no secret.
pub fn register(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    let mut add = |s: String| {
        if !secrets.contains(&s) {
            secrets.push(s);
        }
    };
    add(secret.to_string());
    let encoded = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>();
    if encoded != secret {
        add(encoded);
    }
    // Longest first, so a secret that contains another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every registered secret replaced by [`MASK`].
pub fn scrub(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_masked_in_both_encodings() {
        register("p@ss:w/rd-unit-test");
        let text = "url postgresql://u:p%40ss%3Aw%2Frd-unit-test@h/db and raw p@ss:w/rd-unit-test";
        let out = scrub(text);
        assert!(!out.contains("p@ss:w/rd-unit-test"), "{out}");
        assert!(!out.contains("p%40ss%3Aw%2Frd-unit-test"), "{out}");
        assert_eq!(out.matches(MASK).count(), 2);
        assert_eq!(scrub("nothing secret"), "nothing secret");
    }
}
