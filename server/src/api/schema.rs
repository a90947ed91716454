//! Parameter and field types whose OpenAPI schema states the real constraints (uuid formats,
//! lengths, the page-size range) while parsing accepts anything of the right JSON type, so the
//! domain types still produce the API's own error texts ("Recipient must be a valid user id").

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use crate::domain::ValidationError;

/// A regex character class of every invisible BMP character (`domain::is_invisible`), without
/// the brackets: `[^CLASS]` is "a visible character". Built once from the same predicate the
/// server uses, so the spec and the server cannot drift apart. Astral invisibles (tag characters
/// and a few more) are left out: an ECMA-262 class without the `u` flag cannot name them, and
/// schemathesis checks patterns as such.
fn invisible_class() -> &'static str {
    static CLASS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CLASS.get_or_init(|| {
        let mut class = String::new();
        let mut start: Option<u32> = None;
        for code in 0..=0x1_0000u32 {
            let invisible =
                code < 0x1_0000 && char::from_u32(code).is_some_and(crate::domain::is_invisible);
            match (invisible, start) {
                (true, None) => start = Some(code),
                (false, Some(first)) => {
                    class.push_str(&format!("\\u{first:04x}"));
                    if code - 1 > first {
                        class.push_str(&format!("-\\u{:04x}", code - 1));
                    }
                    start = None;
                }
                _ => {}
            }
        }
        class
    })
}

/// Content: at least one visible character somewhere.
fn content_pattern() -> Option<String> {
    Some(format!("[^{}]", invisible_class()))
}

macro_rules! documented_string {
    ($(#[$doc:meta])* $name:ident, $schema:literal, $format:expr, $min:expr, $max:expr) => {
        documented_string!($(#[$doc])* $name, $schema, $format, $min, $max, None);
    };
    ($(#[$doc:meta])* $name:ident, $schema:literal, $format:expr, $min:expr, $max:expr, $pattern:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(pub String);

        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $schema.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                let mut schema = MetaSchema::new("string");
                schema.format = $format;
                schema.min_length = $min;
                schema.max_length = $max;
                schema.pattern = $pattern;
                MetaSchemaRef::Inline(Box::new(schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromParameter for $name {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                Ok(Self(value.to_owned()))
            }
        }

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                // Strings only, as the schema says; the domain type then says what is wrong
                // with the text.
                match value.unwrap_or_default() {
                    Value::String(text) => Ok(Self(text)),
                    other => Err(ParseError::custom(format!("expected a string, found {other}"))),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

documented_string!(
    /// A user or message id (a UUID).
    UuidText, "id", Some("uuid"), None, None
);
documented_string!(
    /// An email address: at most 254 characters once trimmed.
    EmailText, "email", Some("email"), Some(3), Some(254)
);
documented_string!(
    /// A password: 8 to 128 characters.
    PasswordText, "password", Some("password"), Some(crate::domain::PASSWORD_MIN), Some(crate::domain::PASSWORD_MAX)
);
documented_string!(
    /// An idempotency key: 1 to 255 characters.
    KeyText, "idempotency key", None, Some(1), Some(crate::domain::MAX_KEY_CHARS)
);
documented_string!(
    /// A group's title: 1 to 100 characters once trimmed and NFC-normalised, with no invisible
    /// or control characters except spaces between words.
    TitleText, "title", None, Some(1), Some(crate::domain::TITLE_MAX),
    content_pattern()
);
documented_string!(
    /// Message content: 1 to 4,000 characters, not blank.
    ContentText, "content", None, Some(1), Some(crate::domain::CONTENT_MAX),
    content_pattern()
);

documented_string!(
    /// A responder setting's value: 1 to 4,000 characters, not blank, no control characters
    /// other than newline and tab, no bidirectional overrides.
    SettingText, "setting", None, Some(1), Some(crate::domain::MAX_SETTING_CHARS),
    content_pattern()
);

/// A page size: 1 to 200 (checked by `MessagePage`, which words the error).
#[derive(Debug, Clone, Copy)]
pub struct PageLimit(pub u32);

impl Type for PageLimit {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "limit".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        let mut schema = MetaSchema::new_with_format("integer", "uint32");
        schema.minimum = Some(1.0);
        schema.maximum = Some(f64::from(crate::domain::MAX_PAGE_LIMIT));
        schema.default = Some(crate::domain::DEFAULT_PAGE_LIMIT.into());
        MetaSchemaRef::Inline(Box::new(schema))
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for PageLimit {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        value.trim().parse().map(Self).map_err(ParseError::custom)
    }
}

/// An optional query value parsed into its domain type; a refusal names the parameter.
pub fn parse_optional<T>(
    name: &str,
    raw: Option<String>,
    parse: impl Fn(&str) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    raw.map(|raw| parse(&raw).map_err(|problem| ValidationError::new(format!("{name} {problem}"))))
        .transpose()
}
