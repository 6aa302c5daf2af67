//! Parallel work on the CPU: independent jobs (prompt chunks of a decode, shards of a
//! training batch) run one per core, each single-threaded.
//!
//! At the sizes of decoding and of these models' training steps, burn-flex's threading inside
//! each operation costs about as much as it gains (measured: a decode and an `align` run took
//! as long with one thread as with two), while two independent halves of the work run at
//! nearly twice the speed of one.
//!
//! Invariant: a job computes the same thing whichever worker runs it and however many workers
//! there are (every job runs single-threaded on the CPU), so results depend on how the work is
//! split into jobs, never on the machine's core count.

use burn::tensor::Device;

use crate::CoreError;

fn is_flex(device: &Device) -> bool {
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
    if workers <= 1 {
        return single()?.install(|| (0..jobs).map(&job).collect());
    }
    let done: Vec<Result<Finished<T, E>, CoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let job = &job;
                s.spawn(move || {
                    Ok(single()?.install(|| {
                        (w..jobs)
                            .step_by(workers)
                            .map(|j| (j, job(j)))
                            .collect::<Vec<_>>()
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
}
