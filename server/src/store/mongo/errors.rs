//! What a driver error means to the caller: each becomes a [`StoreError`], `Unavailable` (a 503
//! that heals once the database is back) or `Internal`, counted once; plus the few errors the
//! store inspects (a duplicate key, the one document an ordered insert refused) and the
//! one-line text the start-up error shows.

use anyhow::anyhow;
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};

use crate::store::StoreError;

/// MongoDB's "duplicate key" error code.
const DUPLICATE_KEY: i32 = 11000;
/// The driver's message without its debugging tail (labels, source, raw server response), on
/// one line: server descriptions can span several.
pub(super) fn describe(err: &MongoError) -> String {
    one_line(&err.kind.to_string())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unreachable (server selection timed out, connection lost, pool cleared): a 503 that heals by
/// itself once the database is back. Anything else is a bug or a data problem.
/// Every document a query finds, with a failure at any point (sending it, or a later batch)
/// classified once.
pub(super) async fn all<T>(
    cursor: Result<mongodb::Cursor<T>, MongoError>,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    use futures_util::TryStreamExt;
    cursor
        .map_err(classify)?
        .try_collect()
        .await
        .map_err(classify)
}

/// MongoDB's "out of disk space" error code.
const OUT_OF_DISK_SPACE: i32 = 14031;

/// The server is out of disk space: MongoDB's own code, or the storage engine's words for
/// `ENOSPC` (WiredTiger's, or SQLite's under FerretDB) in a generic error.
pub(super) fn is_out_of_space(err: &MongoError) -> bool {
    let code = match err.kind.as_ref() {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::InsertMany(e) => e.write_errors.iter().flatten().map(|e| e.code).next(),
        _ => None,
    };
    if code == Some(OUT_OF_DISK_SPACE) {
        return true;
    }
    let text = err.kind.to_string().to_ascii_lowercase();
    [
        "no space left on device",
        "database or disk is full",
        "out of disk space",
    ]
    .iter()
    .any(|words| text.contains(words))
}

pub(super) fn classify(err: MongoError) -> StoreError {
    if is_out_of_space(&err) {
        return StoreError::Full.counted();
    }
    let unreachable = matches!(
        err.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || err.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR);
    let error = if unreachable {
        StoreError::Unavailable(describe(&err))
    } else {
        StoreError::Internal(err.into())
    };
    error.counted()
}

/// The write was sent but its answer never came (the connection broke mid-operation): it may
/// have been applied, in part, or be applied later. Failing to reach a server (selection, a
/// cleared pool, DNS) happens before anything is sent.
pub(super) fn is_unanswered(err: &MongoError) -> bool {
    matches!(err.kind.as_ref(), ErrorKind::Io(_))
}

/// The position and reason of the one document an ordered `insertMany` refused (the ones before
/// it are stored), unless the failure was the database's rather than the document's.
pub(super) fn refused_one(err: &MongoError) -> Option<(usize, String)> {
    match err.kind.as_ref() {
        ErrorKind::InsertMany(e) if e.write_concern_error.is_none() => {
            let first = e.write_errors.as_ref()?.first()?;
            Some((first.index, first.message.clone()))
        }
        _ => None,
    }
}

pub(super) fn is_duplicate_key(err: &MongoError) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .any(|e| e.code == DUPLICATE_KEY),
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Documents only this store writes; a field that does not parse means a corrupted document.
pub(super) fn corrupt(what: &str, id: &str, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(anyhow!("stored {what} {id} is corrupt: {problem}")).counted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_up_errors_are_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
