use super::ValidationError;

/// A password as typed by the user. It has no `Display`, no `Serialize`, and its `Debug` is
/// redacted, so it cannot end up in a log line or a response by accident.
#[derive(Clone)]
pub struct Password(String);

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

impl Password {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        let len = raw.chars().count();
        if len < MIN_LEN {
            return Err(ValidationError::new(format!(
                "password must be at least {MIN_LEN} characters"
            )));
        }
        if len > MAX_LEN {
            return Err(ValidationError::new(format!(
                "password must be at most {MAX_LEN} characters"
            )));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_length_in_characters() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("é".repeat(MAX_LEN)).is_ok());
        assert!(Password::parse("x".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn debug_output_is_redacted() {
        let password = Password::parse("hunter2hunter2".into()).expect("valid");
        assert!(!format!("{password:?}").contains("hunter2"));
    }
}
