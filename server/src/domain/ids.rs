use super::ValidationError;
use uuid::Uuid;

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, ": a UUIDv7, so ids sort by creation time.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            pub fn parse(raw: &str) -> Result<Self, ValidationError> {
                Uuid::try_parse(raw.trim())
                    .map(Self)
                    .map_err(|_| ValidationError::new(concat!("must be a valid ", $what, " id")))
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        /// Always the lower-case hyphenated form, so that the text sorts like the id.
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(UserId, "user");
uuid_id!(MessageId, "message");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_sort_by_creation() {
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::new()).collect();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert!(texts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn parses_its_own_text_and_rejects_garbage() {
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()), Ok(id));
        assert_eq!(UserId::parse(&id.to_string().to_uppercase()), Ok(id));
        assert!(UserId::parse("not-an-id").is_err());
        assert!(UserId::parse("").is_err());
    }
}
