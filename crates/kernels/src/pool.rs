//! A persistent worker pool sized for small models: a decode step of a 135M model
//! issues a few hundred parallel operations of tens of microseconds each, so the
//! cost of starting one must be far below that. Workers spin on a generation
//! counter for a short while after each job (a job's whole round trip — publish,
//! run, join — measures ~2.5 µs with two threads: `cargo bench -p inferd-kernels`),
//! then sleep on a condition variable when the engine goes idle.
//!
//! `for_each(tasks, f)` runs `f(t)` for every `t < tasks` on the workers and the
//! calling thread, handing out task indices from one atomic counter (so uneven
//! tasks balance), and returns when every worker has finished with the job. That
//! last wait is what makes lending `f` to other threads sound: no worker can touch
//! it after `for_each` returns. One job runs at a time; a call made while the pool
//! is busy (another thread, or a task that itself calls `for_each`) runs inline on
//! its caller, which is correct, only not parallel.
//!
//! Background work (a memory store embedding what was written) can run on a
//! pool of its own, whose workers start however it asks (at a lower priority):
//! [`with_pool`] makes that pool this thread's [`global`] while it runs.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before sleeping.
const SPIN: Duration = Duration::from_millis(2);

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Job {
    /// Lifetime erased; valid until every worker has checked out of this job.
    f: Task<'static>,
    tasks: usize,
}

struct Shared {
    generation: AtomicU64,
    job: UnsafeCell<Option<Job>>,
    next: AtomicUsize,
    /// Workers done with the current generation.
    checked_out: AtomicUsize,
    panicked: AtomicBool,
    sleeping: AtomicUsize,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread holding `Pool::busy`, before the
// generation is published with Release ordering, and read by workers only after
// they observe that generation with Acquire ordering; it is not written again
// until every worker has checked out of the job.
unsafe impl Sync for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    busy: Mutex<()>,
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sizes the global pool to `threads` (the caller counts as one). Only the first
/// call (or first use) decides; returns the size in effect.
pub fn init_global(threads: usize) -> usize {
    GLOBAL.get_or_init(|| Pool::new(threads)).threads()
}

thread_local! {
    static STAND_IN: Cell<Option<&'static Pool>> = const { Cell::new(None) };
}

/// The global pool (all cores unless [`init_global`] ran first) — or, inside
/// [`with_pool`] on this thread, the pool given there.
pub fn global() -> &'static Pool {
    if let Some(p) = STAND_IN.with(Cell::get) {
        return p;
    }
    GLOBAL.get_or_init(|| Pool::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Runs `f` with `pool` as this thread's [`global`] pool.
pub fn with_pool<T>(pool: &'static Pool, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<&'static Pool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STAND_IN.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(STAND_IN.with(|c| c.replace(Some(pool))));
    f()
}

impl Pool {
    /// A pool of `threads` threads in all: the caller plus `threads - 1` workers.
    pub fn new(threads: usize) -> Pool {
        Pool::named(threads, "inferd-worker", || {})
    }

    /// [`Pool::new`] with workers named `name-N` that run `start` first (to
    /// lower their priority, say).
    pub fn named(threads: usize, name: &str, start: fn()) -> Pool {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            next: AtomicUsize::new(0),
            checked_out: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    start();
                    worker(&s)
                })
                .expect("cannot start a kernel worker thread");
        }
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Threads that take part in a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(t)` for every `t in 0..tasks`, in parallel; returns when all ran.
    /// A panic in any task is re-raised here.
    pub fn for_each(&self, tasks: usize, f: impl Fn(usize) + Sync) {
        if tasks == 0 {
            return;
        }
        let guard = match self.busy.try_lock() {
            Ok(g) if self.workers > 0 && tasks > 1 => g,
            _ => {
                (0..tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        let f: Task<'_> = &f;
        // SAFETY: see `Job::f`: this function does not return before every worker
        // has checked out, so the reference outlives every use.
        let f: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(f) };
        // SAFETY: we hold `busy` and all workers checked out of the previous job.
        unsafe { *s.job.get() = Some(Job { f, tasks }) };
        s.next.store(0, Relaxed);
        s.checked_out.store(0, Relaxed);
        s.generation.fetch_add(1, SeqCst);
        if s.sleeping.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| run_tasks(s, f, tasks)));
        while s.checked_out.load(Acquire) < self.workers {
            std::hint::spin_loop();
        }
        // SAFETY: every worker has checked out; nobody reads the job now.
        unsafe { *s.job.get() = None };
        let worker_panicked = s.panicked.swap(false, Relaxed);
        drop(guard);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if worker_panicked {
            panic!("a task panicked on a kernel worker thread");
        }
    }
}

impl Pool {
    /// Runs `f(i, chunk)` for every `chunk_len`-sized piece of `data` (the last may
    /// be shorter), in parallel; each piece is handed to exactly one task.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        f: impl Fn(usize, &mut [T]) + Sync,
    ) {
        assert!(chunk_len > 0, "chunk length must be positive");
        let len = data.len();
        let base = SendMut(data.as_mut_ptr());
        self.for_each(len.div_ceil(chunk_len), |i| {
            let start = i * chunk_len;
            let n = chunk_len.min(len - start);
            // SAFETY: task i alone gets [start, start + n), inside `data`, which
            // stays mutably borrowed for the whole call.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.at(start), n) };
            f(i, piece);
        });
    }
}

struct SendMut<T>(*mut T);

// SAFETY: used only to hand disjoint pieces of one slice to tasks.
unsafe impl<T: Send> Sync for SendMut<T> {}

impl<T> SendMut<T> {
    fn at(&self, i: usize) -> *mut T {
        // SAFETY: callers stay within the slice the pointer came from.
        unsafe { self.0.add(i) }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.wake.notify_all();
    }
}

fn run_tasks(s: &Shared, f: Task<'_>, tasks: usize) {
    loop {
        let t = s.next.fetch_add(1, Relaxed);
        if t >= tasks {
            return;
        }
        f(t);
    }
}

fn worker(s: &Shared) {
    // The generation the pool was created with, not the current one: a job may
    // have been published before this thread first ran, and it must take part.
    let mut seen = 0;
    loop {
        // Spin briefly for the next job, then sleep until woken.
        let started = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(Acquire) == seen {
            if s.stop.load(Relaxed) {
                return;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && started.elapsed() > SPIN {
                let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, SeqCst);
                while s.generation.load(SeqCst) == seen && !s.stop.load(SeqCst) {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, SeqCst);
                break;
            }
        }
        if s.stop.load(Relaxed) {
            return;
        }
        seen = s.generation.load(Acquire);
        // SAFETY: the job was written before this generation was published and
        // stays valid until this worker checks out below.
        if let Some(job) = unsafe { &*s.job.get() } {
            if catch_unwind(AssertUnwindSafe(|| run_tasks(s, job.f, job.tasks))).is_err() {
                s.panicked.store(true, Relaxed);
            }
        }
        s.checked_out.fetch_add(1, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_pool_stands_in_for_the_global_pool_on_its_thread_only() {
        static OWN: OnceLock<Pool> = OnceLock::new();
        let own: &'static Pool = OWN.get_or_init(|| Pool::named(2, "test-own", || {}));
        let outer = global() as *const Pool;
        let inside = with_pool(own, || {
            let other = std::thread::spawn(|| global() as *const Pool as usize)
                .join()
                .unwrap();
            assert_eq!(other, outer as usize, "other threads keep the global pool");
            let sum = AtomicUsize::new(0);
            global().for_each(10, |t| {
                sum.fetch_add(t, Relaxed);
            });
            assert_eq!(sum.load(Relaxed), 45);
            global() as *const Pool
        });
        assert_eq!(inside, own as *const Pool);
        assert_eq!(global() as *const Pool, outer, "restored after");
        let _ = catch_unwind(AssertUnwindSafe(|| with_pool(own, || panic!("inside"))));
        assert_eq!(global() as *const Pool, outer, "restored after a panic");
    }

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = Pool::new(3);
        for tasks in [0, 1, 2, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(tasks, |t| {
                hits[t].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "tasks={tasks}");
        }
    }

    #[test]
    fn many_small_jobs_back_to_back_and_after_sleeping() {
        let pool = Pool::new(2);
        let sum = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.for_each(4, |t| {
                sum.fetch_add(t, Relaxed);
            });
            if round == 1000 {
                // Long enough for the worker to go to sleep; it must wake.
                std::thread::sleep(SPIN * 3);
            }
        }
        assert_eq!(sum.load(Relaxed), 2000 * 6);
    }

    #[test]
    fn nested_and_concurrent_calls_run_inline() {
        let pool = Arc::new(Pool::new(2));
        let count = AtomicUsize::new(0);
        pool.for_each(4, |_| {
            pool.for_each(3, |_| {
                count.fetch_add(1, Relaxed);
            });
        });
        assert_eq!(count.load(Relaxed), 12);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let c = AtomicUsize::new(0);
                    for _ in 0..200 {
                        p.for_each(8, |_| {
                            c.fetch_add(1, Relaxed);
                        });
                    }
                    c.load(Relaxed)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 1600);
        }
    }

    #[test]
    fn a_job_published_before_the_workers_start_still_completes() {
        for _ in 0..200 {
            let pool = Pool::new(3);
            let n = AtomicUsize::new(0);
            pool.for_each(5, |_| {
                n.fetch_add(1, Relaxed);
            });
            assert_eq!(n.load(Relaxed), 5);
        }
    }

    #[test]
    fn chunks_are_disjoint_and_cover_the_slice() {
        let pool = Pool::new(2);
        let mut v = vec![0usize; 1001];
        pool.for_each_chunk_mut(&mut v, 10, |i, c| {
            for (j, x) in c.iter_mut().enumerate() {
                *x += i * 10 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(64, |t| {
                if t == 40 {
                    panic!("task 40");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.for_each(10, |_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 10);
    }
}
