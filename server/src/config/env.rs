//! Reading one variable: the single helper every setting goes through. It owns the rules common
//! to all of them (a blank value counts as unset; a value a parser refuses becomes a
//! [`ConfigError`] naming the variable), so each setting is one line naming its variable, its
//! default and its parser. Parsers are `fn(&str) -> Result<T, String>` and get the value as it
//! was given (trimming, if they want it, is theirs); the `String` is the problem, in words.

use super::ConfigError;

/// A key/value source (the process environment, or a test's map), read one variable at a time.
pub(super) struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }

    /// The variable parsed, or `default` when it is unset or blank.
    pub(super) fn var<T>(
        &self,
        variable: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.optional(variable, parse)?.unwrap_or(default))
    }

    /// The variable parsed, or `None` when it is unset or blank.
    pub(super) fn optional<T>(
        &self,
        variable: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        (self.lookup)(variable)
            .filter(|raw| !raw.trim().is_empty())
            .map(|raw| parse(&raw).map_err(|problem| ConfigError { variable, problem }))
            .transpose()
    }
}
