//! The gateway's schema, per backend: the budgets' spend table (both
//! backends) and the shared rate limits' GCRA rows (PostgreSQL only:
//! limits are shared by replicas, and SQLite has one).
//!
//! One list for every database the gateway opens (the budgets' `storage`
//! and the limits' `shared_limits.url`), so the two may be one database:
//! each applies the same versions.

use agentmesh_storage::{EmbeddedMigration, Migrations};

/// The migrations, applied when a database is opened.
pub(crate) static MIGRATIONS: Migrations = Migrations {
    sqlite: &[EmbeddedMigration {
        version: 1,
        description: "budget spend per subject and period",
        sql: include_str!("../migrations/sqlite/0001_budget_spend.sql"),
    }],
    postgres: &[
        EmbeddedMigration {
            version: 1,
            description: "budget spend per subject and period",
            sql: include_str!("../migrations/postgres/0001_budget_spend.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "shared rate limits: GCRA rows and their lease function",
            sql: include_str!("../migrations/postgres/0002_rate_limits.sql"),
        },
    ],
};
