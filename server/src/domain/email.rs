use super::ValidationError;

/// An email address, trimmed and lower-cased so that uniqueness is case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

const MAX_LEN: usize = 254;

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let email = raw.trim().to_lowercase();
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
    fn enforces_length_limit() {
        let local = "a".repeat(64);
        let domain = format!("{}.com", "b".repeat(MAX_LEN - 64 - 1 - 4));
        let at_limit = format!("{local}@{domain}");
        assert_eq!(at_limit.len(), MAX_LEN);
        assert!(Email::parse(&at_limit).is_ok());
        assert!(Email::parse(&format!("a{at_limit}")).is_err());
    }
}
