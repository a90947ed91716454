//! A full disk under the database, as one *episode*: the first write that finds the disk full
//! logs one line and raises `palaver_storage_full`; once there is room again (SQLite: the file
//! system says so; MongoDB: a write succeeds), one line more, and it goes down. Every write in between answers
//! `503` with `Retry-After`, and is tried for real: nothing is refused in advance, so writes
//! resume by themselves the moment space is back.
//!
//! Process-wide, like the metric it drives: a server has one store.

use std::sync::atomic::{AtomicBool, Ordering};

static FULL: AtomicBool = AtomicBool::new(false);

/// A write failed because the disk is full.
pub fn hit() {
    if !FULL.swap(true, Ordering::AcqRel) {
        tracing::error!(
            "the disk holding the database is full: writes answer 503 until space is freed \
             (reads go on)"
        );
        crate::metrics::storage_full(true);
    }
}

/// A write succeeded.
pub fn cleared() {
    if FULL.load(Ordering::Acquire) && FULL.swap(false, Ordering::AcqRel) {
        tracing::info!("the database can write again: the disk has space");
        crate::metrics::storage_full(false);
    }
}

/// Whether the last write found the disk full.
pub fn is_full() -> bool {
    FULL.load(Ordering::Acquire)
}
