//! The `[server.connections]` settings, and the caps they resolve to: set
//! explicitly, or derived from the process's file-descriptor soft limit
//! (`RLIMIT_NOFILE`) so that a flood of connections is refused before the
//! process runs out of descriptors.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

/// Limits on the connections each listener (gRPC and admin HTTP) holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    /// Connections the gRPC listener holds at once; beyond it new ones are
    /// closed at once (the client sees a reset). Unset = an eighth of the
    /// descriptor limit (see [`derived_caps`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_grpc: Option<u32>,
    /// Connections the admin HTTP listener holds at once. Unset = a 64th of
    /// the descriptor limit, 4 to 256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_admin: Option<u32>,
    /// A connection that has not finished its opening within this long is
    /// closed: the HTTP/2 preface and first SETTINGS frame on the gRPC
    /// port (after TLS, which has its own `server.tls.handshake_timeout`),
    /// the first request's headers on the admin port.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection without an open call (gRPC) or without a byte either
    /// way (admin HTTP) for this long is closed. Long streams (Follow,
    /// Subscribe, Watch) are calls: their connections stay.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections the kernel queues before they are accepted (the listen
    /// backlog; Linux caps it at `net.core.somaxconn`).
    pub accept_backlog: u32,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            max_grpc: None,
            max_admin: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            accept_backlog: 1024,
        }
    }
}

/// The largest cap a setting may give (more than any descriptor limit
/// allows in practice).
const MAX_CAP: u32 = 1 << 22;

impl ConnectionSettings {
    /// Checks the values that types alone do not rule out (names relative
    /// to `server.`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, cap) in [("max_grpc", self.max_grpc), ("max_admin", self.max_admin)] {
            if let Some(cap) = cap
                && !(1..=MAX_CAP).contains(&cap)
            {
                return Err(ConfigError::new(
                    format!("server.connections.{name}"),
                    format!(
                        "{cap} is out of range: use 1 to {MAX_CAP}, or leave it unset to derive it from the descriptor limit"
                    ),
                ));
            }
        }
        for (name, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::new(
                    format!("server.connections.{name}"),
                    "must be between 1ms and 24h",
                ));
            }
        }
        if !(1..=65_535).contains(&self.accept_backlog) {
            return Err(ConfigError::new(
                "server.connections.accept_backlog",
                format!("{} is out of range: use 1 to 65535", self.accept_backlog),
            ));
        }
        Ok(())
    }

    /// The caps in force: `(gRPC, admin)`, as set or derived from the
    /// process's descriptor soft limit now.
    pub fn caps(&self) -> (usize, usize) {
        let (grpc, admin) = derived_caps(descriptor_limit());
        let or = |set: Option<u32>, derived: usize| {
            set.map_or(derived, |cap| usize::try_from(cap).unwrap_or(derived))
        };
        (or(self.max_grpc, grpc), or(self.max_admin, admin))
    }
}

/// The limit assumed when the process has none (or it cannot be read).
const UNLIMITED: u64 = 1 << 20;

/// The process's soft limit on open file descriptors.
pub fn descriptor_limit() -> u64 {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(UNLIMITED)
            .min(UNLIMITED)
    }
    #[cfg(not(unix))]
    {
        UNLIMITED
    }
}

/// The default caps `(gRPC, admin)` for a descriptor limit of `limit`.
///
/// `agentmesh up` runs all five services, ten listeners, in one process,
/// so each gRPC listener may take an eighth of the limit and each admin
/// listener a 64th (4 to 256): five of each hold at most 45/64 of the
/// descriptors (71 %), and the rest stays for the channels to peers and
/// providers, the database, the spool and log files. A service alone in
/// its process leaves even more.
pub fn derived_caps(limit: u64) -> (usize, usize) {
    let grpc = (limit / 8).max(16);
    let admin = (limit / 64).clamp(4, 256);
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    (size(grpc), size(admin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_room_for_everything_else() {
        assert_eq!(derived_caps(4096), (512, 64));
        assert_eq!(derived_caps(1024), (128, 16));
        assert_eq!(derived_caps(64), (16, 4));
        assert_eq!(derived_caps(1 << 20), (131_072, 256));
        for limit in [1024, 4096, 65_536] {
            let (grpc, admin) = derived_caps(limit);
            let used = 5 * (grpc + admin);
            assert!(
                used * 100 <= usize::try_from(limit).unwrap() * 71,
                "{limit}: {used}"
            );
        }
    }

    #[test]
    fn set_caps_win_and_bad_values_name_the_setting() {
        let settings = ConnectionSettings {
            max_grpc: Some(7),
            max_admin: Some(3),
            ..ConnectionSettings::default()
        };
        assert_eq!(settings.caps(), (7, 3));
        settings.validate().unwrap();
        let bad = [
            ConnectionSettings {
                max_grpc: Some(0),
                ..ConnectionSettings::default()
            },
            ConnectionSettings {
                idle_timeout: Duration::ZERO,
                ..ConnectionSettings::default()
            },
            ConnectionSettings {
                accept_backlog: 0,
                ..ConnectionSettings::default()
            },
        ];
        for (settings, name) in bad
            .iter()
            .zip(["max_grpc", "idle_timeout", "accept_backlog"])
        {
            let err = settings.validate().unwrap_err();
            assert_eq!(err.setting, format!("server.connections.{name}"), "{err}");
        }
    }
}
