use super::ValidationError;

/// Whether a user is reachable in person or has the responder answer for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, poem_openapi::Enum)]
#[oai(rename_all = "UPPERCASE")]
pub enum Status {
    #[default]
    Available,
    Busy,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Available => "AVAILABLE",
            Status::Busy => "BUSY",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "AVAILABLE" => Ok(Status::Available),
            "BUSY" => Ok(Status::Busy),
            _ => Err(ValidationError::new(
                "status must be \"AVAILABLE\" or \"BUSY\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for status in [Status::Available, Status::Busy] {
            assert_eq!(Status::parse(status.as_str()), Ok(status));
        }
        assert!(Status::parse("busy").is_err());
        assert!(Status::parse("AWAY").is_err());
    }
}
