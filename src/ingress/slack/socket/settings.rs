//! What the Socket Mode client reads from the `[slack]` config section
//! (`socket_*` fields; `config/switchboard.toml` documents them).

use std::time::Duration;

use super::super::InvalidSetting;

/// Slack allows at most this many open Socket Mode connections per app.
pub const MAX_CONNECTIONS: usize = 10;

/// Socket Mode client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketModeSettings {
    /// Connections this gateway keeps open, each independent (1 to 10).
    pub connections: usize,
    /// How often the client pings Slack; Slack's pong counts as a frame, so
    /// a healthy idle socket is never silent for longer than this.
    pub ping_interval: Duration,
    /// A connection that received no frame at all (event, ping, pong) for
    /// this long is replaced by a new one.
    pub silence_timeout: Duration,
    /// `/readyz` fails when no connection received a frame within this long.
    pub readiness_max_age: Duration,
}

impl Default for SocketModeSettings {
    fn default() -> Self {
        Self {
            connections: 2,
            ping_interval: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(30),
            readiness_max_age: Duration::from_secs(60),
        }
    }
}

impl SocketModeSettings {
    /// Check the values together; call once when config is loaded.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |field, reason| Err(InvalidSetting { field, reason });
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return invalid(
                "socket_connections",
                "must be 1 to 10 (Slack allows 10 per app)",
            );
        }
        if self.ping_interval < Duration::from_millis(50) {
            return invalid("socket_ping_interval", "must be at least 50ms");
        }
        if self.silence_timeout <= self.ping_interval {
            return invalid(
                "socket_silence_timeout",
                "must be longer than socket_ping_interval, or a quiet but healthy \
                 socket counts as silent",
            );
        }
        if self.readiness_max_age < self.silence_timeout {
            return invalid(
                "socket_readiness_max_age",
                "must be at least socket_silence_timeout",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SocketModeSettings::default().validate(), Ok(()));
    }

    #[test]
    fn impossible_values_are_refused_naming_the_field() {
        let check = |s: SocketModeSettings| s.validate().map_err(|e| e.field);
        let base = SocketModeSettings::default;
        for connections in [0, 11] {
            assert_eq!(
                check(SocketModeSettings {
                    connections,
                    ..base()
                }),
                Err("socket_connections")
            );
        }
        assert_eq!(
            check(SocketModeSettings {
                connections: 10,
                ..base()
            }),
            Ok(())
        );
        assert_eq!(
            check(SocketModeSettings {
                silence_timeout: Duration::from_secs(10),
                ..base()
            }),
            Err("socket_silence_timeout")
        );
        assert_eq!(
            check(SocketModeSettings {
                readiness_max_age: Duration::from_secs(5),
                ..base()
            }),
            Err("socket_readiness_max_age")
        );
        assert_eq!(
            check(SocketModeSettings {
                ping_interval: Duration::from_millis(10),
                ..base()
            }),
            Err("socket_ping_interval")
        );
    }
}
