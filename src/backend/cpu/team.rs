//! A decode thread team: `par_for(n, f)` runs `f(0..n)` on the calling thread plus a fixed
//! set of workers that keep spinning for a short while after each call, so the ~200 small
//! matmuls of one decode step hand work over in nanoseconds instead of waking sleeping
//! rayon workers each time (that was a quarter of a small model's decode time).
//!
//! Size: rayon's thread count (`--threads`) at first use, the caller counting as one.
//! Chunks are claimed from one atomic counter (dynamic balance). A worker joins a call
//! only while it is open; the caller runs chunks too, closes the call when none are left
//! and waits only for the workers that joined, so a worker the OS has not scheduled (a busy
//! machine) never holds the caller up, and `f` never outlives the call. A worker spins for
//! `SPIN` after its last job (yielding the core after `SPIN_PURE`, so a busy rayon pool
//! beside it still runs), then sleeps on a condvar: an idle process uses no CPU.
//!
//! Only one caller leads the team at a time. A second caller (another thread, or `f`
//! itself calling `par_for`) does not wait: it runs its loop on rayon instead.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a worker keeps polling for the next job before it sleeps.
const SPIN: Duration = Duration::from_millis(2);
/// The first part of `SPIN`, polled without giving the core away.
const SPIN_PURE: Duration = Duration::from_micros(50);

type Job = *const (dyn Fn(usize) + Sync);

struct Slot {
    job: Option<Job>,
    n: usize,
}

/// `Shared::state`: bit 63 closed, bits 32..63 the call's generation, bits 0..32 the
/// workers inside the call.
const CLOSED: u64 = 1 << 63;
const GEN_ONE: u64 = 1 << 32;
const ACTIVE: u64 = GEN_ONE - 1;

fn gen_of(state: u64) -> u64 {
    (state & !CLOSED) >> 32
}

struct Shared {
    /// The job of the current generation; written only by the leader while no worker is
    /// inside a call (after the previous call closed with none active).
    slot: UnsafeCell<Slot>,
    state: AtomicU64,
    next: AtomicUsize,
    panicked: AtomicBool,
    sleepers: Mutex<usize>,
    wake: Condvar,
}

// SAFETY: `slot` is written by the leader only while no worker is inside a call, and read
// by a worker only after it joined the open call (a successful CAS on `state`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct Team {
    shared: &'static Shared,
    workers: usize,
    lead: Mutex<()>,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            slot: UnsafeCell::new(Slot { job: None, n: 0 }),
            state: AtomicU64::new(CLOSED),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        }));
        let want = rayon::current_num_threads().max(1) - 1;
        let mut workers = 0;
        for i in 0..want {
            let spawned = std::thread::Builder::new()
                .name(format!("nemo-team-{i}"))
                .spawn(move || worker(shared));
            if spawned.is_ok() {
                workers += 1;
            }
        }
        Team {
            shared,
            workers,
            lead: Mutex::new(()),
        }
    })
}

fn run_chunks(s: &Shared) {
    // SAFETY: called by the leader or by a worker that joined the open call; the leader
    // waits for every joined worker before it returns or rewrites the slot.
    let (job, n) = unsafe {
        let slot = &*s.slot.get();
        match slot.job {
            Some(j) => (&*j, slot.n),
            None => return,
        }
    };
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        job(i);
    }
}

fn worker(s: &'static Shared) {
    let mut seen = gen_of(s.state.load(Ordering::Acquire));
    loop {
        // Wait for a new generation: spin, then spin yielding, then sleep.
        let start = Instant::now();
        let mut polls = 0u32;
        while gen_of(s.state.load(Ordering::Acquire)) == seen {
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(256) {
                let waited = start.elapsed();
                if waited > SPIN {
                    let mut sleepers = s.sleepers.lock().unwrap_or_else(|e| e.into_inner());
                    *sleepers += 1;
                    while gen_of(s.state.load(Ordering::Acquire)) == seen {
                        sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                    }
                    *sleepers -= 1;
                    break;
                }
                if waited > SPIN_PURE {
                    std::thread::yield_now();
                }
            }
            std::hint::spin_loop();
        }
        // Join the call if it is still open.
        let mut st = s.state.load(Ordering::Acquire);
        seen = gen_of(st);
        let joined = loop {
            if st & CLOSED != 0 || gen_of(st) != seen {
                break false;
            }
            match s
                .state
                .compare_exchange_weak(st, st + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => st = now,
            }
        };
        if joined {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(s)));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.state.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Runs `f(r, row)` for every `dim`-long row r of `data`, rows in parallel over the team,
/// a run of rows (at least `grain` values) per task: the row-wise ops of a prefill (norms,
/// gates, the scan's dt) ran on the calling thread alone while the workers spun.
pub fn par_rows<T: Send>(
    data: &mut [T],
    dim: usize,
    grain: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    if dim == 0 {
        return;
    }
    let rows = data.len() / dim;
    let per = grain.div_ceil(dim).max(1);
    if rows <= per {
        data.chunks_exact_mut(dim)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
        return;
    }
    struct Ptr<T>(*mut T);
    // SAFETY: each task gets disjoint rows of `data`, which outlives the call.
    unsafe impl<T> Sync for Ptr<T> {}
    let p = Ptr(data.as_mut_ptr());
    par_for(rows.div_ceil(per), &|c| {
        let p = &p;
        for r in c * per..((c + 1) * per).min(rows) {
            // SAFETY: row r lies in `data` and belongs to this task only.
            let row = unsafe { std::slice::from_raw_parts_mut(p.0.add(r * dim), dim) };
            f(r, row);
        }
    });
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel over the team; returns when all are done.
pub fn par_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n == 0 {
        return;
    }
    if n == 1 {
        f(0);
        return;
    }
    let t = team();
    if t.workers == 0 {
        (0..n).for_each(f);
        return;
    }
    let Ok(_lead) = t.lead.try_lock() else {
        (0..n).into_par_iter().for_each(f);
        return;
    };
    let s = t.shared;
    // SAFETY: the previous call closed with no worker inside, and no worker can join
    // before the store to `state` below, so none reads the slot now. The job's lifetime is
    // erased; it is only called until this function's final wait, while `f` is alive.
    unsafe {
        let slot = &mut *s.slot.get();
        slot.job = Some(std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f));
        slot.n = n;
    }
    s.next.store(0, Ordering::Relaxed);
    let gen = gen_of(s.state.load(Ordering::Relaxed)) + 1;
    s.state.store((gen << 32) & !CLOSED, Ordering::Release);
    if *s.sleepers.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
        s.wake.notify_all();
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(s)));
    s.state.fetch_or(CLOSED, Ordering::AcqRel);
    let mut polls = 0u32;
    while s.state.load(Ordering::Acquire) & ACTIVE != 0 {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(1024) {
            // A joined worker was preempted mid-chunk: let it run.
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
    if s.panicked.swap(false, Ordering::Relaxed) {
        panic!("a decode team worker panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_rows_hands_each_row_with_its_index_to_one_task() {
        // Rows below, at and above the grain (one task, one per run of rows, many).
        for (rows, dim, grain) in [(0usize, 3usize, 8usize), (1, 5, 8), (7, 4, 8), (100, 3, 8)] {
            let mut data = vec![0usize; rows * dim];
            par_rows(&mut data, dim, grain, &|r, row| {
                for v in row.iter_mut() {
                    *v += r + 1;
                }
            });
            for (i, v) in data.iter().enumerate() {
                assert_eq!(*v, i / dim + 1, "rows={rows} dim={dim} element {i}");
            }
        }
    }

    #[test]
    fn par_for_runs_every_index_exactly_once_across_many_calls() {
        for n in [0usize, 1, 2, 3, 17, 1000] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                par_for(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
            }
        }
    }

    #[test]
    fn nested_and_concurrent_callers_still_cover_every_index() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..20 {
                        par_for(8, &|_| {
                            par_for(5, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 20 * 8 * 5);
    }

    #[test]
    fn workers_sleep_after_spinning_and_wake_for_the_next_call() {
        let sum = AtomicUsize::new(0);
        par_for(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 3);
        par_for(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 12);
    }
}
