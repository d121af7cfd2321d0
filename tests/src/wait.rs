//! Polling with a deadline: the one loop behind every "wait until" of the suite.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How often [`wait_until`] looks again: short next to a process start-up, long enough not to
/// keep a core busy.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Calls `check` until it returns `Some`, every `interval`, and returns that value; `None`
/// once `timeout` has passed without it. `check` runs at least once, and once more after the
/// deadline, so a slow last sleep never loses a result that is there.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// Waits until `done` returns true, looking every [`POLL_INTERVAL`]; panics with "timed out
/// after `timeout` waiting until `what`" when it does not within `timeout`.
pub fn wait_until(what: impl Display, timeout: Duration, mut done: impl FnMut() -> bool) {
    if poll_until(timeout, POLL_INTERVAL, || done().then_some(())).is_none() {
        panic!("timed out after {timeout:?} waiting until {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_first_value() {
        let mut calls = 0;
        let got = poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
    }

    #[test]
    fn poll_until_gives_up_after_the_timeout_having_looked_more_than_once() {
        let mut calls = 0;
        let got: Option<()> =
            poll_until(Duration::from_millis(30), Duration::from_millis(5), || {
                calls += 1;
                None
            });
        assert_eq!(got, None);
        assert!(calls >= 2, "looked {calls} time(s)");
    }

    #[test]
    #[should_panic(expected = "timed out after 20ms waiting until the moon is square")]
    fn wait_until_names_what_it_waited_for() {
        wait_until("the moon is square", Duration::from_millis(20), || false);
    }
}
