//! `cargo xtask bench`: throughput benchmarks.
//!
//! `cargo xtask bench [--release] [--infalign-bin PATH] [infalign bench flags]` runs
//! `infalign bench` (decoding and training throughput into `target/bench/models.json`); it needs
//! no Python.
//!
//! `cargo xtask bench --against transformers [--release] [--infalign-bin PATH] [--quick]
//! [--python PATH] [--prompts N] [--n N] [--max-new-tokens N] [--batch N] [--prompt-tokens N]
//! [--new-tokens N] [--device cpu|cuda|cuda:N]` runs the same user tasks in infalign and in
//! Hugging Face transformers (PyTorch eager, the same thread count, the same weights, the same
//! kind of device) in one run, one after the other:
//!
//! - the shipped model: the first 32 prompts of `assets/prompts.jsonl` × 16 samples × at most 64
//!   new tokens, sampling at T = 1. infalign: `infalign generate` timed as a whole process (after
//!   one small untimed run that warms the page cache), tokens counted from its JSONL (a row stops
//!   at EOS, the EOS included). transformers: `model.generate(..., num_return_sequences=16)` over
//!   all prompts in one call, after an untimed warm-up call, tokens counted the same way;
//! - unless `--quick`: a GPT-2-small shape (random weights) decoding 128 + 128 tokens greedily
//!   with the KV cache at batch 1 and 16: infalign's rows come from `infalign bench`, the
//!   transformers rows from `xtask/bench/transformers_bench.py --gpt2-small`; and the
//!   memory-bandwidth floor of batch-1 decoding: the memory's read bandwidth over the bytes of
//!   f32 weights read per token (params × 4). On the CPU the bandwidth is measured here (a 1 GiB
//!   buffer summed by 1 thread and by all threads, best of 3; the larger counts); on a GPU the
//!   Python side measures it (a buffer of up to 4 GiB summed on the device, best of 5).
//!
//! On a GPU, infalign's shipped-model task runs twice: cubecl compiles and autotunes each kernel
//! shape at first use and caches both on disk (`target/environment`), so the first run's time is
//! mostly that work (printed beside the table); the table has the second, which still includes
//! the process start and the model load (transformers' timed call comes after a warm-up call on
//! two prompts, its load excluded).
//!
//! It prints one Markdown table (tokens/s and the ratio infalign / transformers) with the
//! machine, and writes everything to `target/bench/against-transformers.json`.
//!
//! Python: `--python PATH` or `INFALIGN_BENCH_PYTHON`; otherwise a venv at
//! `~/.cache/infalign-bench-venv`, created on first use (`python3 -m venv`, then
//! `pip install torch transformers safetensors`, a multi-GB download) and reused afterwards.
//! The infalign binary: `--infalign-bin PATH` or `INFALIGN_BIN`, otherwise
//! `cargo build -p infalign [--release]` in the target directory (`CARGO_TARGET_DIR` respected).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The venv `--against transformers` creates on first use, under `$HOME`.
const VENV: &str = ".cache/infalign-bench-venv";
const PIP_PACKAGES: [&str; 3] = ["torch", "transformers", "safetensors"];
const SCRIPT: &str = "xtask/bench/transformers_bench.py";

/// `cargo xtask bench ...`.
pub fn run(root: &Path, o: &Options) -> Result<()> {
    if o.training {
        if let Some(b) = o.baseline_bin.as_ref().filter(|b| !b.is_file()) {
            bail!("--baseline-bin {}: no such file", b.display());
        }
        let bin = infalign_binary(root, o)?;
        let this = crate::training_bench::Build {
            bin: &bin,
            device: o.device.as_deref(),
        };
        let baseline = o
            .baseline_bin
            .as_deref()
            .map(|b| crate::training_bench::Build {
                bin: b,
                device: o.baseline_device.as_deref().or(o.device.as_deref()),
            });
        crate::training_bench::run(root, this, baseline)
    } else if o.against.is_some() {
        against(root, o)
    } else {
        plain(root, o)
    }
}

/// `infalign bench` with the flags it shares; `cargo run` unless a binary is given.
fn plain(root: &Path, o: &Options) -> Result<()> {
    let (prompt_tokens, new_tokens) = (o.prompt_tokens.to_string(), o.new_tokens.to_string());
    let mut pass = vec![
        "--prompt-tokens",
        prompt_tokens.as_str(),
        "--new-tokens",
        new_tokens.as_str(),
    ];
    if o.quick {
        pass.push("--quick");
    }
    let out = o.out.as_ref().map(|p| p.display().to_string());
    if let Some(out) = &out {
        pass.extend(["--out", out.as_str()]);
    }
    if let Some(device) = &o.device {
        pass.extend(["--device", device.as_str()]);
    }
    match &o.infalign_bin {
        Some(bin) => {
            let mut args = vec!["bench"];
            args.extend(pass);
            run_status(Command::new(bin).args(&args).current_dir(root), bin, &args)
        }
        None => {
            let mut args = vec!["run"];
            if o.release {
                args.push("--release");
            }
            args.extend(["-p", "infalign", "--", "bench"]);
            args.extend(pass);
            crate::cargo(&args)
        }
    }
}

/// What `--against` compares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// Hugging Face transformers (PyTorch eager), in a virtual environment of its own.
    Transformers,
}

fn positive(v: &str) -> Result<usize, String> {
    match v.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{v}`: expected a positive count")),
    }
}

/// Flags of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Run the same user tasks in another implementation too, in the same run, and print the
    /// ratios.
    #[arg(long, value_enum)]
    against: Option<Against>,
    /// Training throughput (rollouts, align RLOO and PPO, train-scorer) instead of decoding.
    #[arg(long, conflicts_with = "against")]
    training: bool,
    /// Build infalign with the release profile (the dev profile already optimises burn).
    #[arg(long)]
    release: bool,
    /// Skip the GPT-2-small shape.
    #[arg(long)]
    quick: bool,
    /// The infalign binary to measure (default: `INFALIGN_BIN`, else a fresh build).
    #[arg(long)]
    infalign_bin: Option<PathBuf>,
    /// With --training: another infalign binary (an older build, or the same one on another
    /// device) measured in the same run.
    #[arg(long, requires = "training")]
    baseline_bin: Option<PathBuf>,
    /// With --baseline-bin: the device the baseline runs on (default: --device).
    #[arg(long, requires = "baseline_bin")]
    baseline_device: Option<String>,
    /// Python with torch and transformers (default: `INFALIGN_BENCH_PYTHON`, else a venv
    /// created on first use).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Shipped-model task: prompts.
    #[arg(long, default_value_t = 32, value_parser = positive)]
    prompts: usize,
    /// Shipped-model task: samples per prompt.
    #[arg(long, default_value_t = 16, value_parser = positive)]
    n: usize,
    /// Shipped-model task: new tokens at most.
    #[arg(long, default_value_t = 64, value_parser = positive)]
    max_new_tokens: usize,
    /// Shipped-model task: prompts per decoding batch.
    #[arg(long, value_parser = positive)]
    batch: Option<usize>,
    /// GPT-2-small shape: prompt tokens per row.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    prompt_tokens: usize,
    /// GPT-2-small shape: new tokens per row.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    new_tokens: usize,
    /// Without --against: where `infalign bench` writes its JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The device infalign runs on (`cpu`, `wgpu`, `cuda`, `cuda:N`, ...); with --against, the
    /// other side runs on the same kind of device (`cuda:N` → PyTorch's `cuda:N`).
    #[arg(long)]
    device: Option<String>,
}

impl Options {
    /// Fills the paths the environment gives when the flags do not.
    pub fn with_environment(mut self) -> Self {
        if self.infalign_bin.is_none() {
            self.infalign_bin = std::env::var_os("INFALIGN_BIN").map(PathBuf::from);
        }
        if self.python.is_none() {
            self.python = std::env::var_os("INFALIGN_BENCH_PYTHON").map(PathBuf::from);
        }
        self
    }
}

fn run_status(cmd: &mut Command, program: &Path, args: &[&str]) -> Result<()> {
    let shown = format!("{} {}", program.display(), args.join(" "));
    eprintln!("$ {shown}");
    let status = cmd.status().with_context(|| format!("running `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a command, capturing stdout (stderr is inherited); an error names the command.
fn run_stdout(cmd: &mut Command, shown: &str) -> Result<String> {
    eprintln!("$ {shown}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// The `infalign` binary: the given one, or a fresh `cargo build -p infalign`.
fn infalign_binary(root: &Path, o: &Options) -> Result<PathBuf> {
    if let Some(bin) = &o.infalign_bin {
        if !bin.is_file() {
            bail!("--infalign-bin {}: no such file", bin.display());
        }
        return Ok(bin.clone());
    }
    let mut args = vec!["build", "-p", "infalign"];
    if o.release {
        args.push("--release");
    }
    crate::cargo(&args)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(target
        .join(if o.release { "release" } else { "debug" })
        .join("infalign"))
}

/// Versions of torch and transformers under `python`, or why it cannot import them.
fn python_versions(python: &Path) -> Result<(String, String)> {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, transformers; print(torch.__version__, transformers.__version__)",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{} cannot import torch and transformers: {}",
            python.display(),
            err.lines().last().unwrap_or("").trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(t), Some(x)) => Ok((t.to_string(), x.to_string())),
        _ => bail!("{}: unexpected version output `{text}`", python.display()),
    }
}

/// The Python interpreter with torch and transformers: the given one, or the bench venv
/// (created and filled on first use).
fn python(o: &Options) -> Result<PathBuf> {
    if let Some(p) = &o.python {
        python_versions(p).with_context(|| {
            format!(
                "--python {}: install them into it ({} -m pip install {}), or drop --python to \
                 use the venv at ~/{VENV}",
                p.display(),
                p.display(),
                PIP_PACKAGES.join(" ")
            )
        })?;
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = Path::new(&home).join(VENV);
    let py = venv.join("bin/python");
    if py.is_file() && python_versions(&py).is_ok() {
        eprintln!("Python: reusing the venv {}", venv.display());
        return Ok(py);
    }
    if !py.is_file() {
        let shown = format!("python3 -m venv {}", venv.display());
        eprintln!("$ {shown}");
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context(
                "python3 not found: install Python 3 with its venv module (Debian: apt-get \
                 install python3 python3-venv), or pass --python PATH to an interpreter that \
                 has torch and transformers",
            )?;
        if !status.success() {
            bail!(
                "`{shown}` failed ({status}): install the venv module (Debian: apt-get install \
                 python3-venv), or pass --python PATH"
            );
        }
    }
    eprintln!(
        "Python: installing {} into {} (a multi-GB download, once; later runs reuse it)",
        PIP_PACKAGES.join(", "),
        venv.display()
    );
    let shown = format!("{} -m pip install {}", py.display(), PIP_PACKAGES.join(" "));
    eprintln!("$ {shown}");
    let status = Command::new(&py)
        .args(["-m", "pip", "install"])
        .args(PIP_PACKAGES)
        .status()
        .with_context(|| format!("running `{shown}`"))?;
    if !status.success() {
        bail!(
            "`{shown}` failed ({status}): check the network (and disk space) and run \
             `cargo xtask bench --against transformers` again, or install them yourself and pass \
             --python PATH"
        );
    }
    python_versions(&py)?;
    Ok(py)
}

/// Sums `xs` with 8 independent 64-bit adds per 64 bytes: a loop that memory limits, not the
/// add latency, even at the dev profile's opt-level 1 (which does not vectorize; an f32 sum in
/// this crate measured a third less than this on the development machine).
fn sum(xs: &[u64]) -> u64 {
    let (mut s0, mut s1, mut s2, mut s3) = (0u64, 0u64, 0u64, 0u64);
    let (mut s4, mut s5, mut s6, mut s7) = (0u64, 0u64, 0u64, 0u64);
    let chunks = xs.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |t, &x| t.wrapping_add(x));
    for c in chunks {
        if let [a, b, c, d, e, f, g, h] = *c {
            s0 = s0.wrapping_add(a);
            s1 = s1.wrapping_add(b);
            s2 = s2.wrapping_add(c);
            s3 = s3.wrapping_add(d);
            s4 = s4.wrapping_add(e);
            s5 = s5.wrapping_add(f);
            s6 = s6.wrapping_add(g);
            s7 = s7.wrapping_add(h);
        }
    }
    tail ^ s0 ^ s1 ^ s2 ^ s3 ^ s4 ^ s5 ^ s6 ^ s7
}

/// Main memory read bandwidth in bytes/s with `threads` threads, each summing its share of
/// `buf`: the best of 3 passes.
fn read_bandwidth(buf: &[u64], threads: usize) -> f64 {
    let per = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|part| s.spawn(move || sum(std::hint::black_box(part))))
                .collect();
            for h in handles {
                std::hint::black_box(h.join().expect("a bandwidth thread panicked"));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::mem::size_of_val(buf) as f64 / best
}

/// Read bandwidth with one thread and with `threads`, in bytes/s.
fn bandwidth(threads: usize) -> (f64, f64) {
    eprintln!("measuring the memory read bandwidth (1 GiB, best of 3)");
    // A non-zero fill writes every page, so reads come from memory, not from the zero page.
    let buf = vec![0x5555_5555_5555_5555_u64; (1 << 30) / 8];
    let one = read_bandwidth(&buf, 1);
    let many = if threads > 1 {
        read_bandwidth(&buf, threads)
    } else {
        one
    };
    (one, many)
}

/// `cargo xtask bandwidth`: the read bandwidth the `--against` floor uses.
pub fn bandwidth_command() -> Result<()> {
    let threads = threads();
    let (one, many) = bandwidth(threads);
    println!(
        "read bandwidth: {:.1} GB/s (1 thread), {:.1} GB/s ({threads} threads)",
        one / 1e9,
        many / 1e9
    );
    Ok(())
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU model and logical CPU count from /proc/cpuinfo.
fn cpu() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_string(), |(_, m)| m.trim().to_string());
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    (model, cpus)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The commit of the work tree, `-dirty` when tracked files changed.
fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head}-dirty"),
        _ => head,
    }
}

/// One timed measurement.
#[derive(Debug, Clone, Copy)]
struct Timing {
    tokens: f64,
    seconds: f64,
}

impl Timing {
    fn tokens_per_s(self) -> f64 {
        self.tokens / self.seconds
    }
    fn json(self) -> Value {
        json!({"tokens": self.tokens, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s()})
    }
}

/// `infalign generate` on the prompts file, as a whole process; tokens from its JSONL.
/// The sizes of one `infalign generate` run.
#[derive(Clone, Copy)]
struct GenerateSizes {
    n: usize,
    max_new: usize,
    batch: Option<usize>,
}

fn infalign_generate(
    bin: &Path,
    root: &Path,
    (prompts, out): (&Path, &Path),
    GenerateSizes { n, max_new, batch }: GenerateSizes,
    device: Option<&str>,
) -> Result<Timing> {
    let model = root.join("assets/base-model");
    let mut args: Vec<String> = [
        "generate",
        "--model",
        &model.display().to_string(),
        "--prompts",
        &prompts.display().to_string(),
        "--n",
        &n.to_string(),
        "--max-new-tokens",
        &max_new.to_string(),
        "--seed",
        "0",
        "--out",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(b) = batch {
        args.extend(["--batch".to_string(), b.to_string()]);
    }
    if let Some(d) = device {
        args.extend(["--device".to_string(), d.to_string()]);
    }
    let shown = format!("{} {}", bin.display(), args.join(" "));
    eprintln!("$ {shown}");
    let start = Instant::now();
    let result = Command::new(bin)
        .args(&args)
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    let seconds = start.elapsed().as_secs_f64();
    if !result.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let mut tokens = 0;
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let row: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", out.display(), i + 1))?;
        tokens += row["tokens"]
            .as_array()
            .with_context(|| format!("{} line {}: no `tokens` array", out.display(), i + 1))?
            .len();
    }
    Ok(Timing {
        tokens: tokens as f64,
        seconds,
    })
}

/// The first `count` prompts of `assets/prompts.jsonl` into `path`.
fn write_prompts(root: &Path, path: &Path, count: usize) -> Result<()> {
    let src = root.join("assets/prompts.jsonl");
    let all =
        std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
    let rows: Vec<&str> = all
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(count)
        .collect();
    if rows.len() < count {
        bail!(
            "{} has {} prompts; {count} asked",
            src.display(),
            rows.len()
        );
    }
    std::fs::write(path, rows.join("\n") + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// A row of the comparison table.
struct Compared {
    task: String,
    infalign: Timing,
    transformers: Timing,
}

fn f64_field(row: &Value, key: &str, what: &str) -> Result<f64> {
    row[key]
        .as_f64()
        .with_context(|| format!("{what}: no number `{key}` in {row}"))
}

/// PyTorch's name for the kind of device infalign's `--device` names, or why there is none.
fn torch_device(infalign: Option<&str>) -> Result<String> {
    match infalign.unwrap_or("cpu") {
        "cpu" | "flex" | "ndarray" => Ok("cpu".into()),
        d if d == "cuda" || d.starts_with("cuda:") => Ok(d.to_string()),
        d => bail!(
            "--against transformers --device {d}: PyTorch has no such device to compare with; use \
             cpu or cuda[:N]"
        ),
    }
}

/// `cargo xtask bench --against transformers`.
fn against(root: &Path, o: &Options) -> Result<()> {
    let script = root.join(SCRIPT);
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    let device = o.device.as_deref();
    let torch_device = torch_device(device)?;
    let on_gpu = torch_device != "cpu";
    let python = python(o)?;
    let (torch_version, transformers_version) = python_versions(&python)?;
    let bin = infalign_binary(root, o)?;
    let threads = threads();
    let (cpu_model, cpus) = cpu();
    let commit = git_commit(root);
    let load = load_average();
    eprintln!(
        "threads: {threads} (infalign: the available parallelism; transformers: \
         torch.set_num_threads({threads}))"
    );
    if load > 0.5 {
        eprintln!(
            "warning: load average {load:.2} before the run: other processes use the CPU, the \
             timings will be noisy"
        );
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Each side as its users run it: infalign with its default `--batch` (prompts per chunk,
    // chunks decoded in parallel on the CPU), transformers with one `generate` call over all
    // prompts; `--batch N` sets both.
    let hf_batch = o.batch.unwrap_or(o.prompts);

    // The CPU's bandwidth is measured here; a GPU's by the Python side.
    let cpu_bw = (!o.quick && !on_gpu).then(|| bandwidth(threads));

    // The shipped model in infalign: a small untimed run warms the page cache, then the task.
    let prompts = dir.join(format!("prompts-{}.jsonl", o.prompts));
    write_prompts(root, &prompts, o.prompts)?;
    let warm_prompts = dir.join("prompts-warm-up.jsonl");
    write_prompts(root, &warm_prompts, o.prompts.min(2))?;
    let samples = dir.join("infalign-samples.jsonl");
    let warm_up = GenerateSizes {
        n: 2,
        max_new: 4,
        batch: None,
    };
    infalign_generate(&bin, root, (&warm_prompts, &samples), warm_up, device)
        .context("the untimed warm-up run")?;
    let task = GenerateSizes {
        n: o.n,
        max_new: o.max_new_tokens,
        batch: o.batch,
    };
    // On a GPU the first run of the task compiles and autotunes the kernels of its shapes, and
    // cubecl keeps them on disk for later processes: the table takes the second run, and the
    // first is reported beside it.
    let first_run = if on_gpu {
        let t = infalign_generate(&bin, root, (&prompts, &samples), task, device)?;
        eprintln!(
            "infalign shipped model, first run: {} tokens in {:.2} s",
            t.tokens, t.seconds
        );
        Some(t)
    } else {
        None
    };
    let inf_shipped = infalign_generate(&bin, root, (&prompts, &samples), task, device)?;
    eprintln!(
        "infalign shipped model: {} tokens in {:.2} s",
        inf_shipped.tokens, inf_shipped.seconds
    );

    // transformers: the shipped model, and the GPT-2-small shape unless --quick.
    let mut args: Vec<String> = vec![
        script.display().to_string(),
        "--model".into(),
        root.join("assets/base-model").display().to_string(),
        "--prompts".into(),
        prompts.display().to_string(),
        "--threads".into(),
        threads.to_string(),
        "--n-prompts".into(),
        o.prompts.to_string(),
        "--n".into(),
        o.n.to_string(),
        "--max-new-tokens".into(),
        o.max_new_tokens.to_string(),
        "--batch".into(),
        hf_batch.to_string(),
        "--seed".into(),
        "0".into(),
        "--prompt-tokens".into(),
        o.prompt_tokens.to_string(),
        "--new-tokens".into(),
        o.new_tokens.to_string(),
        "--device".into(),
        torch_device.clone(),
    ];
    if !o.quick {
        args.push("--gpt2-small".into());
    }
    let shown = format!("{} {}", python.display(), args.join(" "));
    let stdout = run_stdout(
        Command::new(&python)
            .args(&args)
            .current_dir(root)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            .env("TRANSFORMERS_VERBOSITY", "error")
            .env("TOKENIZERS_PARALLELISM", "false")
            .env("OMP_NUM_THREADS", threads.to_string()),
        &shown,
    )?;
    let hf: Value = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("`{shown}` printed no JSON object:\n{stdout}"))?;
    let hf_rows = hf["rows"].as_array().cloned().unwrap_or_default();
    let hf_row = |task: &str, batch: Option<u64>| -> Result<Timing> {
        let row = hf_rows
            .iter()
            .find(|r| r["task"] == task && batch.is_none_or(|b| r["batch"].as_u64() == Some(b)))
            .with_context(|| format!("transformers: no `{task}` row in {hf}"))?;
        Ok(Timing {
            tokens: f64_field(row, "tokens", "transformers")?,
            seconds: f64_field(row, "seconds", "transformers")?,
        })
    };

    let mut rows = vec![Compared {
        task: format!(
            "shipped model: {} prompts x {} samples x <= {} tokens, T = 1 (infalign --batch {}, \
             transformers {hf_batch} prompts per generate call)",
            o.prompts,
            o.n,
            o.max_new_tokens,
            o.batch.map_or("default (8)".to_string(), |b| b.to_string()),
        ),
        infalign: inf_shipped,
        transformers: hf_row("shipped", None)?,
    }];

    // GPT-2-small: infalign's rows from `infalign bench`.
    let mut models = Value::Null;
    let mut floor = Value::Null;
    let mut floor_line = None;
    // A GPU's bandwidth may be missing (the Python side could not allocate its buffer): then
    // the GPT-2-small rows are still measured, without a floor.
    let bw = match cpu_bw {
        Some(b) => Some(Some(b)),
        None if !o.quick => Some(hf["device_read_bandwidth"].as_f64().map(|b| (b, b))),
        None => None,
    };
    if let Some(bw) = bw {
        let out = dir.join("models.json");
        let mut bench_args = vec![
            "bench".to_string(),
            "--prompt-tokens".into(),
            o.prompt_tokens.to_string(),
            "--new-tokens".into(),
            o.new_tokens.to_string(),
            "--out".into(),
            out.display().to_string(),
        ];
        if let Some(d) = device {
            bench_args.extend(["--device".to_string(), d.to_string()]);
        }
        let shown = format!("{} {}", bin.display(), bench_args.join(" "));
        eprintln!("$ {shown}");
        // Its own table goes to stderr: stdout is this command's table.
        let status = Command::new(&bin)
            .args(&bench_args)
            .current_dir(root)
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .with_context(|| format!("running `{shown}`"))?;
        if !status.success() {
            bail!("`{shown}` failed ({status})");
        }
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        models =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", out.display()))?;
        let mut params = 0.0;
        for b in [1u64, 16] {
            let row = models["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["shape"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("gpt2-small"))
                        && r["task"].as_str().is_some_and(|t| t.starts_with("decode"))
                        && r["batch"].as_u64() == Some(b)
                })
                .with_context(|| {
                    format!("{}: no gpt2-small decode row at batch {b}", out.display())
                })?;
            let what = out.display().to_string();
            params = f64_field(row, "params", &what)?;
            let tokens = (b as usize * o.new_tokens) as f64;
            rows.push(Compared {
                task: format!(
                    "GPT-2-small (12x768, vocab 50257, random weights): decode {}+{} greedy, \
                     KV cache, batch {b}",
                    o.prompt_tokens, o.new_tokens
                ),
                infalign: Timing {
                    tokens,
                    seconds: tokens / f64_field(row, "tokens_per_s", &what)?,
                },
                transformers: hf_row("gpt2-small decode", Some(b))?,
            });
        }
        // Batch-1 decoding reads every f32 weight once per token.
        let bytes_per_token = params * 4.0;
        let inf1 = rows[1].infalign.tokens_per_s();
        let hf1 = rows[1].transformers.tokens_per_s();
        if let Some((bw_one, bw_many)) = bw {
            let floor_tps = bw_one.max(bw_many) / bytes_per_token;
            let read = if on_gpu {
                format!("{torch_device} read bandwidth {:.0} GB/s", bw_one / 1e9)
            } else {
                format!(
                    "read bandwidth {:.1} GB/s (1 thread), {:.1} GB/s ({threads} threads)",
                    bw_one / 1e9,
                    bw_many / 1e9
                )
            };
            floor_line = Some(format!(
                "Bandwidth floor, GPT-2-small batch 1: {read}; {:.1} M params x 4 bytes = {:.0} \
                 MB per token; floor {:.1} tokens/s. infalign {:.1} tokens/s = {:.0}% of the \
                 floor; transformers {:.1} tokens/s = {:.0}%.",
                params / 1e6,
                bytes_per_token / 1e6,
                floor_tps,
                inf1,
                100.0 * inf1 / floor_tps,
                hf1,
                100.0 * hf1 / floor_tps,
            ));
            let bandwidth = if on_gpu {
                json!({ "read_bandwidth_bytes_per_s": bw_one })
            } else {
                json!({
                    "read_bandwidth_bytes_per_s_1_thread": bw_one,
                    "read_bandwidth_bytes_per_s_threads": bw_many,
                    "bandwidth_threads": threads,
                })
            };
            floor = json!({
                "device": torch_device,
                "bandwidth": bandwidth,
                "params": params,
                "bytes_per_token": bytes_per_token,
                "floor_tokens_per_s": floor_tps,
                "infalign_batch1_fraction": inf1 / floor_tps,
                "transformers_batch1_fraction": hf1 / floor_tps,
            });
        } else {
            floor_line = Some(format!(
                "Bandwidth floor: not measured ({torch_device}'s read bandwidth is missing from \
                 the Python side's output; see its log)."
            ));
        }
    }

    let gpu = hf["gpu"]
        .as_str()
        .map_or(String::new(), |g| format!("; device {torch_device}: {g}"));
    let machine = format!(
        "Machine: {cpu_model}, {cpus} logical CPUs, {threads} threads on both sides{gpu}; torch \
         {torch_version}, transformers {transformers_version} (PyTorch eager, f32); commit \
         {commit}; infalign binary {}; load average {load:.2} before the run.",
        bin.display()
    );
    println!(
        "| task | infalign tokens/s | transformers tokens/s | ratio (infalign / transformers) |"
    );
    println!("|---|---:|---:|---:|");
    for r in &rows {
        let (a, b) = (r.infalign.tokens_per_s(), r.transformers.tokens_per_s());
        println!("| {} | {a:.1} | {b:.1} | {:.2} |", r.task, a / b);
    }
    println!();
    println!("{machine}");
    println!(
        "infalign's shipped-model time is its whole process (model load included); \
         transformers' is its generate calls after the import, the load and a warm-up call."
    );
    if let Some(t) = first_run {
        println!(
            "infalign's first run of the shipped-model task, which compiled and autotuned its \
             kernels: {:.1} tokens/s ({:.2} s); the table has the second run.",
            t.tokens_per_s(),
            t.seconds
        );
    }
    if let Some(l) = &floor_line {
        println!("{l}");
    }

    let report = json!({
        "machine": {
            "cpu": cpu_model,
            "logical_cpus": cpus,
            "threads": threads,
            "device": device.unwrap_or("cpu"),
            "torch_device": torch_device,
            "gpu": hf["gpu"],
            "load_average_before": load,
            "commit": commit,
            "infalign_bin": bin.display().to_string(),
            "python": python.display().to_string(),
            "torch": torch_version,
            "transformers": transformers_version,
        },
        "sizes": {
            "prompts": o.prompts,
            "n": o.n,
            "max_new_tokens": o.max_new_tokens,
            "infalign_batch": o.batch, "transformers_batch": hf_batch,
            "prompt_tokens": o.prompt_tokens,
            "new_tokens": o.new_tokens,
            "quick": o.quick,
        },
        "rows": rows.iter().map(|r| json!({
            "task": r.task,
            "infalign": r.infalign.json(),
            "transformers": r.transformers.json(),
            "ratio": r.infalign.tokens_per_s() / r.transformers.tokens_per_s(),
        })).collect::<Vec<_>>(),
        "bandwidth_floor": floor,
        "infalign_shipped_first_run": first_run.map(Timing::json),
        "transformers_output": hf,
        "infalign_bench": models,
    });
    let path = dir.join("against-transformers.json");
    crate::write_atomic(&path, &(serde_json::to_string_pretty(&report)? + "\n"))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
