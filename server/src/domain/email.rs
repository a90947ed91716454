use unicode_normalization::UnicodeNormalization;

use super::ValidationError;
use super::text::is_invisible;

/// An email address, trimmed, NFC-normalised and lower-cased, so that uniqueness ignores case
/// and Unicode spelling (`é` typed as one code point or as `e` + accent is one address).
/// Addresses with invisible or format characters (zero-width spaces, direction marks, ...) are
/// refused: they would make look-alike accounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

const MAX_LEN: usize = 254;

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let email: String = raw.trim().nfc().collect::<String>().to_lowercase();
        let invalid = || ValidationError::new("email must be a valid email address");
        if email.is_empty() {
            return Err(ValidationError::new("email is required"));
        }
        if email.chars().count() > MAX_LEN {
            return Err(ValidationError::new(format!(
                "email must be at most {MAX_LEN} characters"
            )));
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let plausible_domain = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !domain.contains('@');
        if email.chars().any(|c| is_invisible(c) && !c.is_whitespace()) {
            return Err(ValidationError::new(
                "email must not contain invisible or formatting characters",
            ));
        }
        let has_bad_char = email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
        if local.is_empty() || !plausible_domain || has_bad_char {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_whitespace() {
        let email = Email::parse("  Alice@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "alice@example.com");
    }

    #[test]
    fn rejects_implausible_addresses() {
        for raw in [
            "",
            "   ",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "alice@.example.com",
            "alice@example.com.",
            "alice@exa..mple.com",
            "al ice@example.com",
            "alice@@example.com",
            "a@b@example.com",
            "<alice>@example.com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} should be rejected");
        }
    }

    #[test]
    fn refuses_invisible_characters_and_normalises_unicode() {
        for raw in [
            "a\u{200B}lice@example.com",
            "alice\u{200D}@example.com",
            "\u{202E}alice@example.com",
            "alice@exa\u{00AD}mple.com",
            "\u{FEFF}alice@example.com",
        ] {
            let err = Email::parse(raw).expect_err(raw);
            assert!(err.0.contains("invisible"), "{err}");
        }
        let composed = Email::parse("jos\u{00E9}@example.com").expect("valid");
        let decomposed = Email::parse("jose\u{0301}@example.com").expect("valid");
        assert_eq!(composed, decomposed);
    }

    #[test]
    fn enforces_length_limit() {
        let local = "a".repeat(64);
        let domain = format!("{}.com", "b".repeat(MAX_LEN - 64 - 1 - 4));
        let at_limit = format!("{local}@{domain}");
        assert_eq!(at_limit.len(), MAX_LEN);
        assert!(Email::parse(&at_limit).is_ok());
        assert!(Email::parse(&format!("a{at_limit}")).is_err());
    }
}
