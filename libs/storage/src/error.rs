//! The one store error of every service, and the one way it becomes a gRPC
//! status.
//!
//! A service's store returns [`StoreError`]: a database failure (sqlx's
//! error, kept whole for the log) or stored data that cannot be decoded. The
//! handler turns it into a [`Status`] with [`StoreError::to_status`] (or
//! `Status::from`), which
//!
//! * logs the full error (`tracing::error!`, with the request id of the
//!   current [`RequestContext`], if any) and never puts SQL or driver text in
//!   the client's message: that text can name tables, values and hosts;
//! * puts the request id in the client's message instead, so an operator
//!   given the message finds the log line;
//! * chooses the code by what the client can do about it: UNAVAILABLE
//!   (retry) when the database cannot be reached, is busy or ran out of
//!   connections; DATA_LOSS when stored data is corrupt (retrying cannot
//!   help, and an operator must look: DATA_LOSS, not INTERNAL, so alerts can
//!   tell corruption from bugs); INTERNAL for any other database error (a
//!   constraint or query the code got wrong).

use agentmesh_kit::RequestContext;
use tonic::{Code, Status};

/// A failure of a service's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (or could not be reached).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data cannot be decoded: what was written is not what is read.
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
}

impl From<prost::DecodeError> for StoreError {
    fn from(err: prost::DecodeError) -> Self {
        Self::Corrupt(err.to_string())
    }
}

impl StoreError {
    /// The status code a client gets for this error (see the module doc).
    pub fn code(&self) -> Code {
        match self {
            Self::Corrupt(_) => Code::DataLoss,
            Self::Database(err) => database_code(err),
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        self.code() == Code::Unavailable
    }

    /// The status for a client: logs the error with the current request id
    /// and answers a message without database text.
    pub fn to_status(&self) -> Status {
        let request_id = RequestContext::current()
            .and_then(|context| context.request_id().map(str::to_owned))
            .unwrap_or_default();
        let code = self.code();
        tracing::error!(
            error = %self,
            request_id = %request_id,
            grpc_code = ?code,
            "store failure"
        );
        let what = match code {
            Code::Unavailable => "the database is unavailable; retry shortly",
            Code::DataLoss => "stored data cannot be read",
            _ => "the database failed",
        };
        let message = if request_id.is_empty() {
            format!("{what} (details are in the service log)")
        } else {
            format!("{what} (see the service log for request id {request_id})")
        };
        Status::new(code, message)
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        err.to_status()
    }
}

impl From<&StoreError> for Status {
    fn from(err: &StoreError) -> Self {
        err.to_status()
    }
}

/// The code of a database failure: UNAVAILABLE for what passes (the
/// database unreachable, busy, out of connections or resources, shutting
/// down), DATA_LOSS for a corrupt database file, INTERNAL for the rest.
fn database_code(err: &sqlx::Error) -> Code {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Code::Unavailable,
        sqlx::Error::Database(db) => db
            .code()
            .map_or(Code::Internal, |code| database_error_code(&code)),
        _ => Code::Internal,
    }
}

/// The code of an error the database itself reported, by its code: a
/// PostgreSQL SQLSTATE or a SQLite (extended) result code.
fn database_error_code(code: &str) -> Code {
    // SQLite reports its extended result code in decimal (at most four
    // digits); the primary code is its low byte. A SQLSTATE is always five
    // characters, some of them all digits ("08006").
    if code.len() < 5
        && let Ok(extended) = code.parse::<u32>()
    {
        return match extended & 0xff {
            // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
            5 | 6 | 10 | 13 | 14 | 15 => Code::Unavailable,
            // CORRUPT, NOTADB
            11 | 26 => Code::DataLoss,
            _ => Code::Internal,
        };
    }
    // PostgreSQL: connection exceptions (08), insufficient resources (53),
    // operator intervention such as a shutdown (57P0x), and transactions to
    // retry (serialization failure, deadlock).
    let retryable = code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "40001" | "40P01");
    if retryable {
        Code::Unavailable
    } else if code == "XX001" || code == "XX002" {
        // data_corrupted, index_corrupted
        Code::DataLoss
    } else {
        Code::Internal
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database error with a code, as a driver reports it.
    #[derive(Debug)]
    struct Reported(&'static str);

    impl std::fmt::Display for Reported {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "relation \"secret_table\" violates something (code {})",
                self.0
            )
        }
    }

    impl std::error::Error for Reported {}

    impl sqlx::error::DatabaseError for Reported {
        fn message(&self) -> &str {
            "relation \"secret_table\" violates something"
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn reported(code: &'static str) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(Reported(code))))
    }

    #[test]
    fn an_unreachable_database_is_unavailable() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        for err in [
            StoreError::Database(sqlx::Error::Io(refused)),
            StoreError::Database(sqlx::Error::PoolTimedOut),
            StoreError::Database(sqlx::Error::PoolClosed),
            reported("08006"),
            reported("57P01"),
            reported("53300"),
            reported("40001"),
            reported("5"),
            reported("517"),
        ] {
            assert_eq!(err.code(), Code::Unavailable, "{err}");
            assert!(err.is_retryable(), "{err}");
        }
    }

    #[test]
    fn corruption_is_data_loss() {
        // A field that promises five bytes and ends: what a torn row holds.
        let decode = <String as prost::Message>::decode(&[0x0a_u8, 0x05][..]).unwrap_err();
        for err in [
            StoreError::from(decode),
            StoreError::Corrupt("bad json".into()),
            reported("11"),
            reported("26"),
            reported("XX001"),
        ] {
            assert_eq!(err.code(), Code::DataLoss, "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn other_database_errors_are_internal() {
        for err in [
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Database(sqlx::Error::ColumnNotFound("x".into())),
            reported("23505"),
            reported("42P01"),
            reported("2067"),
        ] {
            assert_eq!(err.code(), Code::Internal, "{err}");
        }
    }

    #[test]
    fn clients_see_no_database_text() {
        let status = Status::from(reported("42P01"));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret_table"), "{status:?}");
        assert!(status.message().contains("service log"), "{status:?}");
        let status = Status::from(&StoreError::Corrupt("row 7: expected value".into()));
        assert!(!status.message().contains("row 7"), "{status:?}");
    }

    #[tokio::test]
    async fn the_message_names_the_request_id() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("req-42"));
        let context = RequestContext::from_incoming(&mut headers, std::time::Instant::now());
        let status = context
            .scope(async { StoreError::Database(sqlx::Error::PoolTimedOut).to_status() })
            .await;
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("req-42"), "{status:?}");
    }
}
