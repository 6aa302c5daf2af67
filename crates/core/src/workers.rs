//! Parallel work on the CPU: independent jobs (prompt chunks of a decode, shards of a
//! training batch) run one per core, each single-threaded.
//!
//! At the sizes of decoding and of these models' training steps, burn-flex's threading inside
//! each operation costs about as much as it gains (measured: a decode and an `align` run took
//! as long with one thread as with two), while two independent halves of the work run at
//! nearly twice the speed of one.
//!
//! A job may still split one large operation over the cores no other job uses: each worker
//! records its share of the machine ([`job_threads`]), which the skinny-matmul kernels read.
//!
//! Invariant: a job computes the same thing whichever worker runs it and however many workers
//! there are (every burn operation of a job runs single-threaded on the CPU, and the kernels'
//! splits never change a result), so results depend on how the work is split into jobs, never on
//! the machine's core count.

use std::cell::Cell;

use burn::tensor::Device;

use crate::CoreError;

/// Whether `device` is the CPU backend, burn-flex (with or without autodiff): tensors live in
/// host memory.
pub fn is_flex(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

/// How many jobs to run at once on `device`: one per available core on the CPU (flex), 1
/// elsewhere (a GPU parallelises within an operation).
fn host_workers(device: &Device) -> usize {
    if is_flex(device) {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        1
    }
}

thread_local! {
    /// The cores the job running on this thread may use; `None` outside [`run_on_workers`].
    static JOB_THREADS: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The cores the current job may use for one operation split into parts: inside
/// [`run_on_workers`], the machine's cores divided among its busy workers (at least 1); outside,
/// all of the machine's cores.
pub fn job_threads() -> usize {
    JOB_THREADS
        .with(Cell::get)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Runs `f` with [`job_threads`] returning `threads`.
fn with_job_threads<T>(threads: usize, f: impl FnOnce() -> T) -> T {
    let before = JOB_THREADS.with(|c| c.replace(Some(threads.max(1))));
    let out = f();
    JOB_THREADS.with(|c| c.set(before));
    out
}

/// Runs `a` on this thread and `b` beside it, on a helper thread, when the current job may use
/// at least two cores ([`job_threads`]) and the helper is free, each then given half of them;
/// otherwise one after the other. The helper is a one-thread pool, so `b`'s burn operations run
/// single-threaded as a job's do, and the results are the same whichever way they ran. For two
/// independent forwards of one decoding step (the base model's and a prefix scorer's), which
/// inside a job would otherwise run one after the other. A
/// call that finds the helper busy (another worker's, or one nested inside `b`) runs both on
/// its own thread rather than queue behind it.
pub fn beside<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    use std::sync::atomic::{AtomicBool, Ordering};
    /// Whether a `beside` call holds the helper; released when dropped, a panic included.
    struct Held(&'static AtomicBool);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    static BUSY: AtomicBool = AtomicBool::new(false);
    let threads = job_threads();
    let pool = if threads >= 2 { helper_pool() } else { None };
    let held = pool.filter(|_| {
        BUSY.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    });
    let Some(pool) = held else {
        return (a(), b());
    };
    let _held = Held(&BUSY);
    let half = threads / 2;
    let mut from_b = None;
    let from_a = pool.in_place_scope(|s| {
        let slot = &mut from_b;
        s.spawn(move |_| *slot = Some(with_job_threads(half, b)));
        with_job_threads(half, a)
    });
    (from_a, from_b.expect("the scope waits for its spawned job"))
}

/// The one-thread pool [`beside`] runs its second function on; `None` if the thread could not
/// be started (then both run on the caller).
fn helper_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "infalign-beside".into())
            .build()
            .ok()
    })
    .as_ref()
}

/// What one worker returns: its jobs' indices and results.
type Finished<T, E> = Vec<(usize, Result<T, E>)>;

/// Runs `job(0)`, ..., `job(jobs - 1)` and returns their results in that order, or the first
/// job's error (in job order). On the CPU they are spread over one thread per core (job `j` on
/// worker `j % workers`), each running its jobs single-threaded; elsewhere they run one after
/// the other on this thread. A system that refuses a thread is an error too.
pub fn run_on_workers<T: Send, E: From<CoreError> + Send>(
    device: &Device,
    jobs: usize,
    job: impl Fn(usize) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E> {
    if !is_flex(device) {
        return (0..jobs).map(&job).collect();
    }
    let workers = host_workers(device).min(jobs);
    let single = || {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| CoreError::Worker(e.to_string()))
    };
    let share = host_workers(device) / workers.max(1);
    if workers <= 1 {
        return single()?.install(|| with_job_threads(share, || (0..jobs).map(&job).collect()));
    }
    let done: Vec<Result<Finished<T, E>, CoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let job = &job;
                s.spawn(move || {
                    Ok(single()?.install(|| {
                        with_job_threads(share, || {
                            (w..jobs)
                                .step_by(workers)
                                .map(|j| (j, job(j)))
                                .collect::<Vec<_>>()
                        })
                    }))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut all = Vec::with_capacity(jobs);
    for d in done {
        all.extend(d?);
    }
    all.sort_by_key(|(j, _)| *j);
    all.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_job_order_on_single_threaded_workers() {
        let device = Device::flex();
        let out = run_on_workers(&device, 7, |j| {
            Ok::<_, CoreError>((j * j, rayon::current_num_threads()))
        })
        .unwrap();
        assert_eq!(
            out.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
            vec![0, 1, 4, 9, 16, 25, 36]
        );
        assert!(out.iter().all(|&(_, threads)| threads == 1));
        // Seven jobs keep every core busy: each job may use its one core. One job alone may use
        // them all.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shares = run_on_workers(&device, 7, |_| Ok::<_, CoreError>(job_threads())).unwrap();
        assert!(shares.iter().all(|&t| t == 1), "{shares:?}");
        let alone = run_on_workers(&device, 1, |_| Ok::<_, CoreError>(job_threads())).unwrap();
        assert_eq!(alone, vec![cores]);
        assert!(
            run_on_workers(&device, 0, Ok::<_, CoreError>)
                .unwrap()
                .is_empty()
        );
        // The first failing job's error, in job order.
        let e = run_on_workers(&device, 5, |j| {
            if j >= 3 {
                Err(CoreError::Worker(format!("job {j}")))
            } else {
                Ok(j)
            }
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "could not start a worker thread: job 3");
    }

    /// The helper is one per process: tests that look at where `beside` ran take turns.
    static HELPER: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn beside_returns_both_results_and_splits_the_job_cores() {
        let _turn = HELPER.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let out = run_on_workers(&device, 1, |_| {
            Ok::<_, CoreError>(beside(
                || (job_threads(), rayon::current_num_threads(), 2 + 2),
                || (job_threads(), rayon::current_num_threads(), "b"),
            ))
        })
        .unwrap();
        let ((ta, na, a), (tb, nb, b)) = out[0];
        assert_eq!((a, b), (4, "b"));
        // Both sides run single-threaded burn operations; with two cores or more each gets half.
        assert_eq!((na, nb), (1, 1));
        let half = if cores >= 2 { cores / 2 } else { cores };
        assert_eq!((ta, tb), (half, half));
        // A job that has one core runs both on it.
        let busy = run_on_workers(&device, cores.max(2) * 2, |_| {
            Ok::<_, CoreError>(beside(job_threads, job_threads))
        })
        .unwrap();
        assert!(busy.iter().all(|&(a, b)| a == 1 && b == 1), "{busy:?}");
    }

    #[test]
    fn beside_runs_on_its_own_thread_when_the_helper_is_taken() {
        let _turn = HELPER.lock().unwrap_or_else(|e| e.into_inner());
        let device = Device::flex();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let me = || std::thread::current().id();
        // Nested inside `b` (on the helper), a second `beside` finds the helper taken and runs
        // both of its functions on the helper's thread instead of queueing behind itself.
        let out = run_on_workers(&device, 1, |_| {
            Ok::<_, CoreError>(beside(
                || 1,
                || {
                    let outer = me();
                    let (x, y) = beside(me, me);
                    (outer, x, y)
                },
            ))
        })
        .unwrap();
        let (one, (outer, x, y)) = out[0];
        assert_eq!(one, 1);
        assert_eq!((x, y), (outer, outer));
        // Once released, the helper is free again: with two cores, `b` runs on another thread.
        if cores >= 2 {
            let out = run_on_workers(&device, 1, |_| Ok::<_, CoreError>(beside(me, me))).unwrap();
            assert_ne!(out[0].0, out[0].1);
        }
        // A panic in `b` releases the helper too.
        let caught = std::panic::catch_unwind(|| {
            run_on_workers(&device, 1, |_| {
                Ok::<_, CoreError>(beside(|| 0, || -> i32 { panic!("b fails") }))
            })
        });
        assert!(caught.is_err());
        if cores >= 2 {
            let out = run_on_workers(&device, 1, |_| Ok::<_, CoreError>(beside(me, me))).unwrap();
            assert_ne!(out[0].0, out[0].1);
        }
    }
}
