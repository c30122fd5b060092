//! Watermark benchmark: the cost of one wait (register, resolve or drop)
//! in the shapes the broker makes. Not a test: nothing here asserts on
//! speed. CPU only, no disk.
//!
//! `cargo bench --bench watermark`. Each line: nanoseconds per wait.
//! - rising: 64 waits with rising targets, one advance, all resolve (the
//!   appends of a flush round on `flushed`);
//! - deadlines: 20,000 deadlines in flight, each dropped unreached, oldest
//!   first (requests answered before their deadline, on the shard's clock);
//! - behind long polls: the same, with 1,000 long polls waiting beyond them.

use ringmq::storage::Watermark;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Instant;

const ROUNDS: u64 = 200_000;
const ROUND_WAITS: u64 = 64;
const DEADLINES_IN_FLIGHT: usize = 20_000;
const DEADLINES: u64 = 1_000_000;
const LONG_POLLS: usize = 1_000;

/// A waker that does nothing: the bench polls by hand.
struct Unwoken;

impl Wake for Unwoken {
    fn wake(self: Arc<Self>) {}
}

fn poll<F: Future>(future: Pin<&mut F>, context: &mut Context<'_>) -> bool {
    future.poll(context).is_ready()
}

fn rising(context: &mut Context<'_>) -> f64 {
    let mark: Watermark<()> = Watermark::new(0);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let base = round * ROUND_WAITS;
        let mut waits: Vec<_> = (1..=ROUND_WAITS).map(|target| Box::pin(mark.wait_for(base + target))).collect();
        for wait in &mut waits {
            assert!(!poll(wait.as_mut(), context));
        }
        mark.advance(base + ROUND_WAITS);
        for wait in &mut waits {
            assert!(poll(wait.as_mut(), context));
        }
    }
    started.elapsed().as_nanos() as f64 / (ROUNDS * ROUND_WAITS) as f64
}

fn deadlines(context: &mut Context<'_>, long_polls: usize) -> f64 {
    let clock: Watermark<()> = Watermark::new(0);
    let mut long: Vec<_> = (0..long_polls).map(|_| Box::pin(clock.wait_for(u64::MAX / 2))).collect();
    for wait in &mut long {
        assert!(!poll(wait.as_mut(), context));
    }
    let mut in_flight = VecDeque::with_capacity(DEADLINES_IN_FLIGHT + 1);
    let started = Instant::now();
    for deadline in 0..DEADLINES {
        let mut wait = Box::pin(clock.wait_for(1_000_000 + deadline));
        assert!(!poll(wait.as_mut(), context));
        in_flight.push_back(wait);
        if in_flight.len() > DEADLINES_IN_FLIGHT {
            in_flight.pop_front();
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(clock.waiting(), DEADLINES_IN_FLIGHT + long_polls);
    elapsed.as_nanos() as f64 / DEADLINES as f64
}

fn main() {
    let waker = Waker::from(Arc::new(Unwoken));
    let context = &mut Context::from_waker(&waker);
    println!("rising: {:.1} ns per wait", rising(context));
    println!("deadlines: {:.1} ns per wait", deadlines(context, 0));
    println!("behind long polls: {:.1} ns per wait", deadlines(context, LONG_POLLS));
}
