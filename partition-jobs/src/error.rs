//! [`Error`]: everything this crate's database functions can fail with.

use tokio_postgres::error::SqlState;

use crate::month::Month;

/// Errors of partition maintenance. Expected cases have their own variant; database failures keep
/// the driver error as their source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A statement failed.
    #[error("database error while {context}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The driver's error (SQLSTATE available through `code()`).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A lock could not be taken within `lock_timeout` (or a deadlock / serialization failure
    /// happened) on every one of the bounded attempts.
    #[error("gave up {context} after {attempts} attempts: locks unavailable")]
    LockContention {
        /// What was being done.
        context: &'static str,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The month's fields are out of range, so no name or bound can be made from it.
    #[error("invalid month {year}-{month}")]
    InvalidMonth {
        /// The year given.
        year: i32,
        /// The month given.
        month: u32,
    },
    /// A table with the partition's name exists but is not a partition of `events` (for example a
    /// month detached by retention). It is never re-attached silently.
    #[error("table {name} exists but is not attached to events")]
    UnattachedTableExists {
        /// The table's name.
        name: String,
    },
    /// An existing partition (made by hand) covers part of the month, so the month cannot be made.
    #[error("month {month} overlaps partition {partition}")]
    Overlap {
        /// The month asked for.
        month: Month,
        /// The partition in the way.
        partition: String,
    },
    /// [`crate::ensure_months`] was asked for more months than it makes in one call.
    #[error("refusing to create {from}..{to}: more than {limit} months")]
    RangeTooLarge {
        /// First month asked for.
        from: Month,
        /// Last month asked for.
        to: Month,
        /// The limit.
        limit: i64,
    },
    /// A table to drop is still attached to `events`.
    #[error("table {name} is still attached to events; detach it first")]
    StillAttached {
        /// The table's name.
        name: String,
    },
    /// A policy value is out of range.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),
    /// A stored policy row has a value this version does not know.
    #[error("stored policy has unknown retention mode {0:?}")]
    UnknownRetentionMode(String),
    /// Outcomes could not be encoded as JSON for the run record.
    #[error("encoding the run record")]
    Json(#[source] serde_json::Error),
}

impl Error {
    /// Wraps a driver error with what was being done.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Db { context, source }
    }

    /// The SQLSTATE of the underlying database error, if any.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            Error::Db { source, .. } | Error::LockContention { source, .. } => source.code(),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: lock timeout, deadlock or serialization failure.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Db { source, .. } if is_retryable_db(source))
    }
}

/// Lock timeout (55P03), deadlock (40P01) and serialization failure (40001) are worth a retry.
pub(crate) fn is_retryable_db(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}
