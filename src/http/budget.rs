//! The in-flight memory budget of request bodies (`STRATA_INGEST_MEMORY_BYTES`): one server-wide
//! weighted semaphore. A request takes a [`Ticket`] and grows it by every buffer it holds (the raw
//! body as it arrives, the decompressed body, the rows parsed from it) before holding it; the
//! ticket gives everything back when the request ends. A request that would take the server past
//! the budget is shed at once with 503 `overloaded` and `Retry-After`, so memory is bounded by
//! configuration whatever the clients send, and nothing waits on memory while holding some.
//!
//! Large and compressed bodies are decoded and parsed on the blocking pool, at most [`Budget::cpu`]
//! at a time (one per two cores, at least one): the workers that answer every other request keep
//! the rest of the machine, and only those few threads ever hold a large buffer (an allocator keeps
//! freed memory per thread, so many threads touching large buffers would keep many of them).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

/// Bytes per permit: fine enough for small bodies, coarse enough for a large budget in a `u32`.
const UNIT: usize = 1024;

/// How long a large body waits for a decoding slot before it is shed.
const CPU_WAIT: Duration = Duration::from_secs(2);

/// The server-wide budget.
#[derive(Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    bytes: usize,
    cpu: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `bytes`, decoding large bodies on at most `cpu` threads at once.
    pub fn new(bytes: usize, cpu: usize) -> Budget {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Budget { sem: Arc::new(Semaphore::new(units)), bytes, cpu: Arc::new(Semaphore::new(cpu.max(1))) }
    }

    /// Decoding threads for this machine: one per two cores, at least one.
    pub fn cpu() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    /// A slot to decode one large body in, waiting at most [`CPU_WAIT`], else 503 `overloaded`.
    pub async fn cpu_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(CPU_WAIT, self.cpu.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(overloaded(self.bytes)),
        }
    }

    /// An empty ticket for one request.
    pub fn ticket(&self) -> Ticket {
        Ticket { sem: self.sem.clone(), permit: None, bytes: 0, budget: self.bytes }
    }

    /// Bytes held by requests now.
    pub fn in_use(&self) -> usize {
        let total = self.bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        (total - self.sem.available_permits()) * UNIT
    }
}

/// One request's share of the budget; returned when dropped.
pub struct Ticket {
    sem: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    /// Bytes accounted so far (the permits cover them rounded up to [`UNIT`]).
    bytes: usize,
    budget: usize,
}

impl Ticket {
    /// Accounts `more` bytes, or refuses with 503 `overloaded` when the budget cannot hold them.
    pub fn grow(&mut self, more: usize) -> Result<(), ApiError> {
        let bytes = self.bytes.saturating_add(more);
        let held = self.bytes.div_ceil(UNIT);
        let needed = bytes.div_ceil(UNIT) - held;
        if needed > 0 {
            let n = u32::try_from(needed).map_err(|_| overloaded(self.budget))?;
            let permit = self.sem.clone().try_acquire_many_owned(n).map_err(|_| overloaded(self.budget))?;
            match &mut self.permit {
                Some(p) => p.merge(permit),
                None => self.permit = Some(permit),
            }
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Bytes accounted so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

fn overloaded(budget: usize) -> ApiError {
    crate::metrics::shed();
    ApiError::unavailable(
        "overloaded",
        format!(
            "the server holds as many request bodies as its {budget}-byte memory budget allows; \
             retry after the Retry-After delay"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_share_the_budget_and_give_it_back_when_dropped() {
        let budget = Budget::new(10 * UNIT, 1);
        let mut a = budget.ticket();
        a.grow(1).unwrap();
        a.grow(UNIT - 1).unwrap();
        assert_eq!(budget.in_use(), UNIT);
        a.grow(5 * UNIT).unwrap();
        let mut b = budget.ticket();
        b.grow(4 * UNIT).unwrap();
        assert_eq!(budget.in_use(), 10 * UNIT);
        let e = b.grow(1).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (503, "overloaded"));
        assert_eq!(b.bytes(), 4 * UNIT, "a refused growth accounts nothing");
        drop(a);
        assert_eq!(budget.in_use(), 4 * UNIT);
        b.grow(6 * UNIT).unwrap();
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_is_refused_without_holding_any() {
        let budget = Budget::new(4 * UNIT, 1);
        let mut t = budget.ticket();
        assert_eq!(t.grow(4 * UNIT + 1).unwrap_err().code, "overloaded");
        assert_eq!(budget.in_use(), 0);
    }
}
