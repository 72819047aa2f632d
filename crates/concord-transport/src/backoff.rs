//! One retry policy for every network call of a node: exponential backoff with a cap,
//! an optional deadline, and a stop signal, so no retry loop spins, runs for ever past
//! its caller's patience, or outlives shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
}

impl Backoff {
    /// Waits start at `first` and double up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, next: first, max, deadline: None }
    }

    /// Give up once waiting again would pass `deadline`.
    pub fn until(mut self, deadline: Instant) -> Backoff {
        self.deadline = Some(deadline);
        self
    }

    /// The usual policy for reaching NATS: 100 ms doubling to 2 s.
    pub fn network() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Sleep before the next attempt. False (without sleeping) when the deadline would
    /// pass first.
    pub async fn wait(&mut self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() + self.next > d) {
            return false;
        }
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
        true
    }

    /// After a success: the next wait starts small again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Why [`retry`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// The error was not worth retrying, or the deadline passed: the last error.
    Failed(E),
    /// The stop signal fired.
    Stopped,
}

/// Call `attempt` until it succeeds, fails with an error `retryable` refuses, the
/// backoff's deadline passes, or `stop` turns true. Each failure is logged with `what`.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    stop: &mut watch::Receiver<bool>,
    retryable: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    loop {
        if *stop.borrow() {
            return Err(GaveUp::Stopped);
        }
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if !retryable(&e) {
            return Err(GaveUp::Failed(e));
        }
        tracing::warn!(error = %e, "{what} failed; retrying");
        tokio::select! {
            waited = backoff.wait() => if !waited { return Err(GaveUp::Failed(e)) },
            _ = stop.changed() => return Err(GaveUp::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backs_off_until_the_deadline_and_stops_on_signal() {
        let (_tx, mut stop) = watch::channel(false);
        let started = Instant::now();
        let mut calls = 0;
        let backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).until(started + Duration::from_secs(3));
        let r: Result<(), GaveUp<String>> = retry(
            "test",
            backoff,
            &mut stop,
            |_| true,
            || {
                calls += 1;
                async { Err("down".to_string()) }
            },
        )
        .await;
        assert_eq!(r, Err(GaveUp::Failed("down".into())));
        // 100 + 200 + 400 + 800 + 1000 ms = 2.5 s; one more second would pass 3 s.
        assert_eq!(calls, 6);
        assert!(started.elapsed() <= Duration::from_secs(3));

        let r: Result<(), GaveUp<String>> = retry(
            "test",
            Backoff::network(),
            &mut stop,
            |e: &String| e != "fatal",
            || async { Err("fatal".to_string()) },
        )
        .await;
        assert_eq!(r, Err(GaveUp::Failed("fatal".into())), "a refused error is not retried");

        let (tx, mut stop) = watch::channel(false);
        let handle = tokio::spawn(async move {
            retry("test", Backoff::network(), &mut stop, |_| true, || async { Err::<(), _>("down".to_string()) }).await
        });
        tokio::time::sleep(Duration::from_millis(350)).await;
        tx.send(true).unwrap();
        assert_eq!(handle.await.unwrap(), Err(GaveUp::Stopped));
    }
}
