use super::ValidationError;
use super::text::is_invisible;

/// The text of a message: not blank and at most [`MAX_CHARS`] characters. Stored exactly as sent.
/// Blank means nothing visible: whitespace, zero-width and direction marks alone count as empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(String);

pub const MAX_CHARS: usize = 4_000;

impl Content {
    pub fn parse(raw: String) -> Result<Self, ValidationError> {
        if raw.chars().all(is_invisible) {
            return Err(ValidationError::new("content must not be empty"));
        }
        if raw.chars().count() > MAX_CHARS {
            return Err(ValidationError::new(format!(
                "content must be at most {MAX_CHARS} characters"
            )));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_blank_and_oversized_content() {
        assert!(Content::parse(String::new()).is_err());
        assert!(Content::parse(" \n\t ".into()).is_err());
        assert!(Content::parse("\u{200B}\u{200E}\u{2060} \u{FEFF}".into()).is_err());
        assert!(Content::parse("\u{200B}hi".into()).is_ok());
        assert!(Content::parse("ü".repeat(MAX_CHARS)).is_ok());
        assert!(Content::parse("x".repeat(MAX_CHARS + 1)).is_err());
    }

    #[test]
    fn keeps_the_text_as_sent() {
        let content = Content::parse("  hi there \n".into()).expect("valid");
        assert_eq!(content.as_str(), "  hi there \n");
    }
}
