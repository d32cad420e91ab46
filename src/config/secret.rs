//! A secret value (token, password, URL with credentials) that cannot be
//! logged or printed by accident: `Debug`, `Display` and `Serialize` all
//! redact it. Read it with [`Secret::expose`] at the one place that needs it.

use std::fmt;

use serde::{Serialize, Serializer};

/// A string that never shows up in logs, debug output or printed config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call this only where the value is handed to the
    /// client that needs it, never to build a log line.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let secret = Secret::new("xoxb-very-secret");
        assert!(!format!("{secret:?}").contains("very-secret"));
        assert!(!format!("{secret}").contains("very-secret"));
        let json = serde_json::to_string(&secret).expect("serialize");
        assert!(!json.contains("very-secret"));
        assert_eq!(secret.expose(), "xoxb-very-secret");
    }
}
