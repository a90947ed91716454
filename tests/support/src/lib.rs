//! What Palaver's tests share: the test MongoDB and fresh database names. A crate of its own
//! (a dev-dependency), so none of it ships in the server.

use std::io::Write;
use std::sync::Once;

/// The MongoDB the tests may use (`TEST_MONGODB_URI`). Unset: the MongoDB tests skip, and
/// say so loudly on stderr (past the test harness's capture); with `CI=true` that is a
/// failure, so CI can never pass without having run them.
pub fn test_mongodb_uri() -> Option<String> {
    if let Some(uri) = std::env::var("TEST_MONGODB_URI")
        .ok()
        .filter(|uri| !uri.trim().is_empty())
    {
        return Some(uri);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| matches!(v.as_str(), "true" | "1"));
    assert!(
        !in_ci,
        "CI is set but TEST_MONGODB_URI is not: the MongoDB tests must run in CI"
    );
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED the MongoDB tests: TEST_MONGODB_URI is unset. \
             See docs/mongodb.md to run them. !!!\n"
        );
    });
    None
}

/// A database name no other test uses.
pub fn fresh_database_name() -> String {
    format!("palaver_test_{}", uuid::Uuid::now_v7().simple())
}
