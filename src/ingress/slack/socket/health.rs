//! When each Socket Mode connection last heard from Slack: the watchdog's
//! metric and the gateway's readiness.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The age of the last frame per connection slot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SocketHealth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    max_age: Duration,
    last_frame: Mutex<Vec<Option<Instant>>>,
}

impl SocketHealth {
    /// `slots` connections; ready while one heard a frame within `max_age`.
    pub fn new(slots: usize, max_age: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: Instant::now(),
                max_age,
                last_frame: Mutex::new(vec![None; slots]),
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Vec<Option<Instant>>> {
        // A panic while holding this lock cannot leave the times half
        // written, so a poisoned lock is still good to read.
        self.inner
            .last_frame
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Slot `slot` received a frame now.
    pub fn saw_frame(&self, slot: usize) {
        if let Some(at) = self.slots().get_mut(slot) {
            *at = Some(Instant::now());
        }
    }

    /// The age of the freshest frame of any slot (None: none ever).
    pub fn newest_frame_age(&self) -> Option<Duration> {
        self.slots().iter().flatten().map(Instant::elapsed).min()
    }

    /// The age of the stalest slot's last frame; a slot that never received
    /// one counts from start-up. The exported metric.
    pub fn oldest_frame_age(&self) -> Duration {
        let started = self.inner.started;
        self.slots()
            .iter()
            .map(|at| at.unwrap_or(started).elapsed())
            .max()
            .unwrap_or_default()
    }

    /// Ready when some connection heard from Slack within the threshold.
    pub fn check(&self) -> Result<(), String> {
        let max = self.inner.max_age;
        match self.newest_frame_age() {
            Some(age) if age <= max => Ok(()),
            Some(age) => Err(format!(
                "no Slack Socket Mode connection received a frame for {}s (threshold {}s)",
                age.as_secs(),
                max.as_secs()
            )),
            None => Err("no Slack Socket Mode connection has received a frame yet".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_a_frame_then_ready_while_fresh() {
        let health = SocketHealth::new(2, Duration::from_secs(60));
        assert!(health.check().is_err());
        assert_eq!(health.newest_frame_age(), None);
        health.saw_frame(1);
        assert_eq!(health.check(), Ok(()));
        assert!(
            health
                .newest_frame_age()
                .is_some_and(|a| a < Duration::from_secs(1))
        );
        // Slot 0 never heard anything: it is the stalest.
        assert!(health.oldest_frame_age() >= health.newest_frame_age().unwrap_or_default());
        health.saw_frame(7); // out of range: ignored
    }

    #[test]
    fn stale_frames_fail_the_check() {
        let health = SocketHealth::new(1, Duration::ZERO);
        health.saw_frame(0);
        std::thread::sleep(Duration::from_millis(5));
        let err = health.check().expect_err("stale");
        assert!(err.contains("threshold"), "{err}");
    }
}
