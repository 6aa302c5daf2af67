//! `cargo xtask exp <preset> [--scale cpu|gpu] [--set key=value]... [--run DIR] [--fresh]
//! [--release]`: runs an experiment preset, `xtask/presets/<preset>.toml`, into `runs/<preset>/`
//! (or `--run DIR`).
//!
//! A preset is data: a description, the paper's claim it tests, variables per scale
//! (`[scales.cpu]`, `[scales.gpu]`: model, prompts, steps, samples, device), and steps, each an
//! `infalign` command line. In an argument, `{name}` is replaced by a variable's value and an
//! argument that is exactly `{@name}` is replaced by a list variable's items. A step may repeat
//! over `each` (a table of lists: every combination) and `cases` (a list of variable tables).
//! Built-in variables: `run` (the run directory), `prompts_file` (the first `prompts` of
//! `assets/prompts.jsonl`) and `eval_prompts_file` (the next `eval_prompts`, held out).
//!
//! Invariants: a step whose `creates` path exists is skipped, so an interrupted experiment
//! continues where it stopped (`--fresh` starts over); a run directory keeps the preset's name,
//! the scale and the variables it was started with (`settings.json`), and a later call that
//! changes one of them is refused before anything is built or written but the directory's lock,
//! so finished steps of one setting are never mixed with another's (a variable a preset adds
//! later is allowed; edits to a preset's steps are not detected); a directory holding files but
//! no record is refused, except `runs/<preset>` from before runs recorded settings; `--fresh`
//! removes only a run directory of the same preset (its `settings.json` says so, or it is an
//! empty directory, or such an older `runs/<preset>`), never a symbolic link, and renames it
//! aside first so an interrupted removal leaves no half run; one `xtask exp` at a time holds a
//! run directory (the lock is this process's: a step it started keeps running if it alone is
//! killed); every step's command line, duration and status go to `steps.jsonl` in the run
//! directory; the binary is built once, up front, and then run directly (`INFALIGN_BIN` names
//! another one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// A preset file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Preset {
    /// What the experiment does.
    description: String,
    /// The paper's finding it reproduces.
    claim: String,
    /// Variables per scale.
    scales: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// The steps, in order.
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    /// Shown in progress lines (variables substituted).
    name: String,
    /// The `infalign` arguments.
    args: Vec<String>,
    /// A path (relative to the run directory) whose existence means the step is done.
    #[serde(default)]
    creates: Option<String>,
    /// Repeat over every combination of these values.
    #[serde(default)]
    each: BTreeMap<String, Vec<toml::Value>>,
    /// Repeat once per table of variables.
    #[serde(default)]
    cases: Vec<BTreeMap<String, toml::Value>>,
}

/// A variable: a string, or a list spliced by `{@name}`.
#[derive(Debug, Clone)]
enum Var {
    One(String),
    Many(Vec<String>),
}

fn scalar(v: &toml::Value) -> Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("expected a string or a number, found {other}"),
    })
}

fn var(v: &toml::Value) -> Result<Var> {
    match v {
        toml::Value::Array(items) => {
            Ok(Var::Many(items.iter().map(scalar).collect::<Result<_>>()?))
        }
        other => Ok(Var::One(scalar(other)?)),
    }
}

type Vars = BTreeMap<String, Var>;

/// Replaces `{name}` in `s`; an unknown name is an error.
fn substitute(s: &str, vars: &Vars) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .with_context(|| format!("unclosed `{{` in `{s}`"))?;
        let name = &rest[open + 1..open + close];
        match vars.get(name) {
            Some(Var::One(v)) => out.push_str(v),
            Some(Var::Many(_)) => bail!("`{{{name}}}` is a list: use it alone as `{{@{name}}}`"),
            None => bail!("unknown variable `{name}` in `{s}`"),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_args(args: &[String], vars: &Vars) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args {
        if let Some(name) = a.strip_prefix("{@").and_then(|r| r.strip_suffix('}')) {
            match vars.get(name) {
                Some(Var::Many(items)) => {
                    for i in items {
                        out.push(substitute(i, vars)?);
                    }
                }
                Some(Var::One(v)) => out.push(substitute(v, vars)?),
                None => bail!("unknown variable `{name}`"),
            }
        } else {
            out.push(substitute(a, vars)?);
        }
    }
    Ok(out)
}

/// Every variable binding a step runs with: cases × combinations of `each`.
fn bindings(step: &Step, vars: &Vars) -> Result<Vec<Vars>> {
    let mut out = vec![vars.clone()];
    if !step.cases.is_empty() {
        out = out
            .iter()
            .flat_map(|b| {
                step.cases.iter().map(move |case| {
                    let mut b = b.clone();
                    for (k, v) in case {
                        // A case value may itself use variables, e.g. `{run}/model`.
                        let v = match var(v)? {
                            Var::One(s) => Var::One(substitute(&s, &b)?),
                            many => many,
                        };
                        b.insert(k.clone(), v);
                    }
                    Ok(b)
                })
            })
            .collect::<Result<_>>()?;
    }
    for (k, values) in &step.each {
        let mut next = Vec::new();
        for b in &out {
            for v in values {
                let mut b = b.clone();
                // A list value may itself use variables, e.g. `{steps}`.
                let value = substitute(&scalar(v)?, &b)?;
                b.insert(k.clone(), Var::One(value));
                next.push(b);
            }
        }
        out = next;
    }
    Ok(out)
}

/// How a preset runs: its scale, overridden variables, and whether it starts over.
#[derive(Debug, Clone, clap::Args)]
pub struct RunFlags {
    /// The preset's scale (`[scales.cpu]`, `[scales.gpu]`, ...).
    #[arg(long, default_value = "cpu")]
    pub scale: String,
    /// Override one variable of the scale (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    pub sets: Vec<(String, String)>,
    /// Build infalign with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// Flags of `cargo xtask exp`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The preset: a file `xtask/presets/<preset>.toml`.
    pub preset: String,
    /// Start over: remove the run directory first (finished steps are otherwise kept); only a
    /// run directory of this preset, never a symbolic link.
    #[arg(long)]
    pub fresh: bool,
    /// The run directory (default `runs/<preset>`; a relative DIR is taken from the current
    /// directory), e.g. to run another scale or other `--set` values beside an earlier run.
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    #[command(flatten)]
    pub flags: RunFlags,
}

fn key_value(kv: &str) -> Result<(String, String), String> {
    kv.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{kv}`: expected KEY=VALUE"))
}

/// The names of the shipped presets.
pub fn presets(root: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("xtask/presets"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_suffix(".toml")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The text of a prompts file: `count` prompts of `assets/prompts.jsonl` after the first `first`.
fn prompts_text(root: &Path, first: usize, count: usize) -> Result<String> {
    let path = root.join("assets/prompts.jsonl");
    let all =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<&str> = all.lines().skip(first).take(count).collect();
    if rows.len() < count {
        bail!(
            "{} has {} prompts after the first {first}; {count} asked",
            path.display(),
            rows.len()
        );
    }
    Ok(rows.join("\n") + "\n")
}

/// What a run directory is started with: the preset, the scale and the scale's variables after
/// `--set`, as recorded in its `settings.json`.
fn settings(preset: &str, scale: &str, vars: &Vars) -> serde_json::Value {
    let vars: serde_json::Map<String, serde_json::Value> = vars
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Var::One(s) => serde_json::json!(s),
                Var::Many(items) => serde_json::json!(items),
            };
            (k.clone(), v)
        })
        .collect();
    serde_json::json!({ "preset": preset, "scale": scale, "vars": vars })
}

/// The settings recorded in `run`, if it has a record; an error names a record this task did not
/// write.
fn recorded_settings(run: &Path) -> Result<Option<serde_json::Value>> {
    let record = run.join("settings.json");
    if !record.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&record)
        .with_context(|| format!("reading {}", record.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .ok()
        .filter(|v: &serde_json::Value| {
            v["preset"].is_string() && v["scale"].is_string() && v["vars"].is_object()
        })
        .with_context(|| {
            format!(
                "{}: not the record of settings `xtask exp` writes (preset, scale, vars); \
                 remove the directory by hand, or pass --run with another one",
                record.display()
            )
        })?;
    Ok(Some(value))
}

/// Removes `run` for `--fresh`, but only a run directory of `preset` and never a symbolic link:
/// one whose `settings.json` names `preset`, or (made before runs recorded their settings) the
/// default directory `default` holding `steps.jsonl` or both prompts files, or an empty one.
/// The directory is first renamed to a hidden sibling, so a removal cut short leaves no half
/// run directory behind, only that sibling (removed by the next `--fresh`).
fn remove_run_dir(run: &Path, preset: &str, default: &Path) -> Result<()> {
    let exists = removable(run, preset, default)?;
    let tombstone = tombstone(run)?;
    if tombstone.is_dir() {
        std::fs::remove_dir_all(&tombstone)
            .with_context(|| format!("removing {}", tombstone.display()))?;
    }
    if !exists {
        return Ok(());
    }
    std::fs::rename(run, &tombstone)
        .with_context(|| format!("renaming {} to {}", run.display(), tombstone.display()))?;
    std::fs::remove_dir_all(&tombstone).with_context(|| format!("removing {}", tombstone.display()))
}

/// Claims `run` for this process (creating it): an OS lock on its `.exp.lock`, released by the
/// system when the process ends however it ends, so a second `xtask exp` into the same
/// directory is refused while the first runs. The lock is this process's: an `infalign` step it
/// started keeps running if `xtask` alone is killed.
fn lock_run_dir(run: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let path = run.join(".exp.lock");
    // Opened without truncating: a held lock's file keeps its holder's process id.
    let opened = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path);
    let mut file = opened.with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `xtask exp` (process {}) is running into {}: wait for it to finish",
            std::fs::read_to_string(&path).unwrap_or_default().trim(),
            run.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => bail!("locking {}: {e}", path.display()),
    }
    use std::io::{Seek, Write};
    file.set_len(0)
        .and_then(|()| file.seek(std::io::SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(file)
}

/// The hidden sibling a run directory is renamed to while it is removed.
fn tombstone(run: &Path) -> Result<PathBuf> {
    let name = run
        .file_name()
        .with_context(|| format!("{}: not a directory name", run.display()))?;
    Ok(run.with_file_name(format!(".{}.removing", name.to_string_lossy())))
}

/// Whether `run` exists, for [`remove_run_dir`]; an error if it may not be removed.
fn removable(run: &Path, preset: &str, default: &Path) -> Result<bool> {
    let Ok(meta) = std::fs::symlink_metadata(run) else {
        return Ok(false);
    };
    if meta.file_type().is_symlink() {
        bail!(
            "{} is a symbolic link: --fresh removes run directories, not links (remove what it \
             points to by hand, or pass --run with another directory)",
            run.display()
        );
    }
    let ours = match recorded_settings(run)? {
        Some(before) => before["preset"] == preset,
        None => older_run(run, default),
    };
    if !(holds_nothing(run)? || ours) {
        bail!(
            "{} is not a run directory of `{preset}` (its settings.json names another preset, \
             or it has none): --fresh will not remove it; remove it by hand if it should go",
            run.display()
        );
    }
    Ok(true)
}

/// Whether `run` holds nothing but this task's lock file (which does not make it a run).
fn holds_nothing(run: &Path) -> Result<bool> {
    let mut entries =
        std::fs::read_dir(run).with_context(|| format!("reading {}", run.display()))?;
    entries.try_fold(true, |nothing, e| {
        let e = e.with_context(|| format!("reading {}", run.display()))?;
        Ok(nothing && e.file_name() == ".exp.lock")
    })
}

/// Whether `run` is the preset's default directory `default`, made by a run from before runs
/// recorded their settings (it holds `steps.jsonl` or both prompts files, and no record).
fn older_run(run: &Path, default: &Path) -> bool {
    run == default
        && (run.join("steps.jsonl").is_file()
            || (run.join("prompts.jsonl").is_file() && run.join("eval-prompts.jsonl").is_file()))
}

/// Readies `run` for `settings` (after `--fresh` has removed it, if asked): a directory started
/// before must have been started with the same preset and scale and the same value of every
/// variable both have (a preset may add variables later); anything else is an error that names
/// each difference and changes nothing. Then records the settings, keeping variables the record
/// has and this call does not.
fn prepare_run_dir(run: &Path, settings: &serde_json::Value, default: &Path) -> Result<()> {
    std::fs::create_dir_all(run).with_context(|| format!("creating {}", run.display()))?;
    let record = settings_to_record(run, settings, default)?;
    crate::write_atomic(
        &run.join("settings.json"),
        &(serde_json::to_string_pretty(&record)? + "\n"),
    )
}

/// What [`prepare_run_dir`] records in `run` for `settings`, or the error that refuses them;
/// reads only. A directory without a record is accepted when it does not exist, holds nothing,
/// or is an older run of the preset's default directory `default` (whose settings cannot be
/// checked: a warning says so).
fn settings_to_record(
    run: &Path,
    settings: &serde_json::Value,
    default: &Path,
) -> Result<serde_json::Value> {
    let mut record = settings.clone();
    let recorded = recorded_settings(run)?;
    if recorded.is_none() && run.exists() && !holds_nothing(run)? {
        if !older_run(run, default) {
            bail!(
                "{} holds files but no settings.json, so it is not a run directory of \
                 `xtask exp`: pass --run with another directory, or remove it by hand",
                run.display()
            );
        }
        eprintln!(
            "[exp] {} was started before run directories recorded their settings: whether its \
             finished steps used the same scale and variables cannot be checked",
            run.display()
        );
    }
    if let Some(before) = recorded {
        let mut differences = Vec::new();
        for key in ["preset", "scale"] {
            if before[key] != settings[key] {
                differences.push(format!(
                    "{key} {} there, {} now",
                    before[key], settings[key]
                ));
            }
        }
        let (old, new) = (&before["vars"], &settings["vars"]);
        for (k, v) in new.as_object().into_iter().flatten() {
            if let Some(was) = old.get(k).filter(|was| *was != v) {
                differences.push(format!("`{k}` = {was} there, {v} now"));
            }
        }
        if !differences.is_empty() {
            let remedy = if before["preset"] == settings["preset"] {
                "Start it over (`--fresh`; `xtask demo` without `--keep`) or give this call its \
                 own directory (`--run DIR`)"
            } else {
                "Give this call its own directory (`--run DIR`)"
            };
            bail!(
                "{} was started with other settings ({}): its finished steps would be mixed \
                 with this call's. {remedy}",
                run.display(),
                differences.join("; ")
            );
        }
        for (k, v) in old.as_object().into_iter().flatten() {
            if !new.as_object().is_some_and(|n| n.contains_key(k)) {
                record["vars"][k] = v.clone();
            }
        }
    }
    Ok(record)
}

/// A step that runs again (its `creates` is missing) into an output directory an interrupted
/// attempt left behind: a training command continues from the checkpoint there (`--resume`;
/// a checkpoint completed but not yet swapped in, `.checkpoint.ready`, counts), or starts over
/// (`--overwrite`) when there is none; `init` replaces the directory. The commands refuse such a
/// directory without one of the two flags. The directory is `--out`'s, or pretrain's
/// `--set out_dir=`.
fn with_rerun_flag(root: &Path, args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    let command = args.first().map(String::as_str);
    let trains = matches!(
        command,
        Some("align" | "train-scorer" | "train-rm" | "pretrain")
    );
    if !(trains || command == Some("init"))
        || args.iter().any(|a| a == "--resume" || a == "--overwrite")
    {
        return args;
    }
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.windows(2)
                .filter(|w| w[0] == "--set")
                .find_map(|w| w[1].strip_prefix("out_dir=").map(str::to_string))
        });
    let Some(out) = out.map(|o| root.join(o)) else {
        return args;
    };
    let holds_files = std::fs::read_dir(&out).is_ok_and(|mut e| e.next().is_some());
    let checkpoint = ["checkpoint", ".checkpoint.ready"]
        .iter()
        .any(|c| out.join(c).join("state.json").is_file());
    if trains && checkpoint {
        args.push("--resume".into());
    } else if holds_files {
        args.push("--overwrite".into());
    }
    args
}

/// The `infalign` binary: `INFALIGN_BIN`, or a fresh build (with the features the device
/// needs) in the target directory.
fn binary(root: &Path, device: Option<&str>, release: bool) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("INFALIGN_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut args = vec!["build", "-q", "-p", "infalign"];
    if release {
        args.push("--release");
    }
    let feature = device.and_then(|d| match d.split(':').next() {
        Some("cuda") => Some("cuda"),
        Some("wgpu") => Some("wgpu"),
        Some("ndarray") => Some("ndarray"),
        _ => None,
    });
    if let Some(f) = feature {
        args.extend(["--features", f]);
    }
    // The dev profile already optimizes burn; `--release` also optimizes our own crates.
    crate::cargo(&args)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("infalign"))
}

/// Runs a preset; returns its run directory.
pub fn run(root: &Path, o: &Options) -> Result<PathBuf> {
    let path = root.join(format!("xtask/presets/{}.toml", o.preset));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no preset `{}` (shipped: {})",
            o.preset,
            presets(root).unwrap_or_default().join(", ")
        )
    })?;
    let preset: Preset =
        toml::from_str(&text).with_context(|| format!("{}: malformed preset", path.display()))?;
    let scale = preset.scales.get(&o.flags.scale).with_context(|| {
        format!(
            "{}: no [scales.{}] (has: {})",
            path.display(),
            o.flags.scale,
            preset.scales.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let run: PathBuf = match &o.run {
        // Normalised (`./`, a trailing `/`), so a link named with a trailing slash is still seen
        // as a link and the directory's own name is its last component.
        Some(dir) => std::path::absolute(dir)
            .with_context(|| format!("--run {}", dir.display()))?
            .components()
            .collect(),
        None => root.join("runs").join(&o.preset),
    };
    if !matches!(
        run.components().next_back(),
        Some(std::path::Component::Normal(_))
    ) {
        bail!(
            "--run {}: a run directory needs a name of its own (not `/` or `..`)",
            run.display()
        );
    }
    let mut vars: Vars = BTreeMap::new();
    for (k, v) in scale {
        vars.insert(k.clone(), var(v)?);
    }
    for (k, v) in &o.flags.sets {
        vars.insert(k.clone(), Var::One(v.clone()));
    }
    let count = |name: &str| -> Result<usize> {
        match vars.get(name) {
            Some(Var::One(v)) => v
                .parse()
                .with_context(|| format!("`{name}` = `{v}`: expected a count")),
            _ => bail!(
                "{}: [scales.{}] needs `{name}`",
                path.display(),
                o.flags.scale
            ),
        }
    };
    let (train, held_out) = (count("prompts")?, count("eval_prompts")?);
    let prompts = [
        ("prompts.jsonl", prompts_text(root, 0, train)?),
        ("eval-prompts.jsonl", prompts_text(root, train, held_out)?),
    ];
    let settings = settings(&o.preset, &o.flags.scale, &vars);
    vars.insert("run".into(), Var::One(run.display().to_string()));
    vars.insert(
        "prompts_file".into(),
        Var::One(run.join("prompts.jsonl").display().to_string()),
    );
    vars.insert(
        "eval_prompts_file".into(),
        Var::One(run.join("eval-prompts.jsonl").display().to_string()),
    );
    let device = match vars.get("device") {
        Some(Var::One(d)) => Some(d.clone()),
        _ => None,
    };
    // Expand everything before running anything: a typo fails now, not an hour in.
    let mut plan = Vec::new();
    for step in &preset.steps {
        for b in bindings(step, &vars)? {
            let name = substitute(&step.name, &b)?;
            let args = expand_args(&step.args, &b)?;
            let creates = step
                .creates
                .as_deref()
                .map(|c| substitute(c, &b).map(|c| run.join(c)))
                .transpose()?;
            plan.push((name, args, creates));
        }
    }
    eprintln!(
        "[exp {}] {}\n[exp {}] claim: {}\n[exp {}] scale `{}`, {} steps into {}",
        o.preset,
        preset.description,
        o.preset,
        preset.claim,
        o.preset,
        o.flags.scale,
        plan.len(),
        run.display()
    );
    // Whatever refuses this call does so before the build and before the run directory changes.
    let default = root.join("runs").join(&o.preset);
    let mut lock = lock_run_dir(&run)?;
    if o.fresh {
        removable(&run, &o.preset, &default)?;
    } else {
        settings_to_record(&run, &settings, &default)?;
    }
    let bin = binary(root, device.as_deref(), o.flags.release)?;
    if o.fresh {
        remove_run_dir(&run, &o.preset, &default)?;
        // The lock went with the directory (another call would have found it held).
        lock = lock_run_dir(&run)?;
    }
    let _lock = lock;
    prepare_run_dir(&run, &settings, &default)?;
    for (name, text) in &prompts {
        crate::write_atomic(&run.join(name), text)?;
    }
    let start = Instant::now();
    let log = run.join("steps.jsonl");
    for (i, (name, args, creates)) in plan.iter().enumerate() {
        if let Some(c) = creates
            && c.exists()
        {
            eprintln!(
                "[exp {}] {}/{} {name}: done before, skipped",
                o.preset,
                i + 1,
                plan.len()
            );
            continue;
        }
        eprintln!(
            "[exp {}] {}/{} {name} ({:.0} s so far)",
            o.preset,
            i + 1,
            plan.len(),
            start.elapsed().as_secs_f64()
        );
        let mut cmd = Command::new(&bin);
        if let Some(d) = &device {
            cmd.args(["--device", d]);
        }
        let args = with_rerun_flag(root, args);
        let t = Instant::now();
        let status = cmd
            .args(&args)
            .current_dir(root)
            .status()
            .with_context(|| format!("running {}", bin.display()))?;
        let row = serde_json::json!({
            "step": name, "args": args, "seconds": t.elapsed().as_secs_f64(),
            "success": status.success(),
        });
        // One line appended per step (one write): earlier lines are never rewritten.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{row}\n").as_bytes()))
            .with_context(|| format!("appending to {}", log.display()))?;
        if !status.success() {
            bail!(
                "step `{name}` failed: infalign {}\n(fix and rerun: finished steps are kept)",
                args.join(" ")
            );
        }
    }
    eprintln!(
        "[exp {}] finished in {:.0} s: {}",
        o.preset,
        start.elapsed().as_secs_f64(),
        run.join("report.html").display()
    );
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.insert("run".into(), Var::One("/r".into()));
        v.insert("steps".into(), Var::One("40".into()));
        v
    }

    #[test]
    fn variables_substitute_and_lists_splice() {
        let mut v = vars();
        v.insert(
            "shaping".into(),
            Var::Many(vec!["--t".into(), "{steps}".into()]),
        );
        let args: Vec<String> = ["--out", "{run}/a", "{@shaping}"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            expand_args(&args, &v).unwrap(),
            ["--out", "/r/a", "--t", "40"]
        );
        assert!(
            substitute("{nope}", &v)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        assert!(
            substitute("{shaping}", &v)
                .unwrap_err()
                .to_string()
                .contains("@shaping")
        );
    }

    #[test]
    fn steps_expand_over_cases_and_each() {
        let step: Step = toml::from_str(
            r#"
            name = "align {method} beta={beta}"
            args = ["align", "{@shaping}", "--beta", "{beta}"]
            each = { beta = [0.1, 1] }
            cases = [{ method = "exp", shaping = ["--transform", "exp"] }, { method = "raw", shaping = ["--raw"] }]
            "#,
        )
        .unwrap();
        let b = bindings(&step, &vars()).unwrap();
        assert_eq!(b.len(), 4);
        // Case values use variables too.
        let nested: Step = toml::from_str(
            r#"
            name = "n"
            args = ["--reward", "{reward}", "{@more}"]
            cases = [{ reward = "length(t_max={steps})", more = ["{run}/x"] }]
            "#,
        )
        .unwrap();
        let nb = bindings(&nested, &vars()).unwrap();
        assert_eq!(
            expand_args(&nested.args, &nb[0]).unwrap(),
            ["--reward", "length(t_max=40)", "/r/x"]
        );
        let names: Vec<String> = b
            .iter()
            .map(|b| substitute(&step.name, b).unwrap())
            .collect();
        assert_eq!(names[0], "align exp beta=0.1");
        assert_eq!(names[3], "align raw beta=1");
        assert_eq!(
            expand_args(&step.args, &b[1]).unwrap(),
            ["align", "--transform", "exp", "--beta", "1"]
        );
    }

    #[test]
    fn an_interrupted_training_step_reruns_with_resume_or_overwrite() {
        let root = tempfile::tempdir().unwrap();
        let args = |cmd: &str| -> Vec<String> {
            [cmd, "--x", "1", "--out", "run/a"]
                .map(String::from)
                .to_vec()
        };
        let flag = |cmd: &str| {
            with_rerun_flag(root.path(), &args(cmd))
                .last()
                .cloned()
                .unwrap()
        };
        // Nothing there yet: as written.
        assert_eq!(flag("align"), "run/a");
        // Files of an attempt without a checkpoint: start over.
        std::fs::create_dir_all(root.path().join("run/a")).unwrap();
        std::fs::write(root.path().join("run/a/metrics.jsonl"), "").unwrap();
        assert_eq!(flag("align"), "--overwrite");
        assert_eq!(flag("init"), "--overwrite");
        // A checkpoint: continue from it; commands that write files, not runs, are unchanged.
        std::fs::create_dir_all(root.path().join("run/a/checkpoint")).unwrap();
        std::fs::write(root.path().join("run/a/checkpoint/state.json"), "{}").unwrap();
        assert_eq!(flag("train-scorer"), "--resume");
        assert_eq!(flag("rollouts"), "run/a");
        // A checkpoint completed but not swapped in counts; pretrain names its directory in
        // `--set out_dir=`.
        std::fs::rename(
            root.path().join("run/a/checkpoint"),
            root.path().join("run/a/.checkpoint.ready"),
        )
        .unwrap();
        assert_eq!(flag("align"), "--resume");
        let pretrain: Vec<String> = ["pretrain", "--set", "steps=3", "--set", "out_dir=run/a"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            with_rerun_flag(root.path(), &pretrain).last().unwrap(),
            "--resume"
        );
    }

    #[test]
    fn a_run_directory_keeps_its_settings_and_fresh_removes_only_run_directories() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        let with = |preset: &str, scale: &str, steps: &str, snap: Option<&str>| {
            let mut v = vars();
            v.insert("steps".into(), Var::One(steps.into()));
            if let Some(x) = snap {
                v.insert("snap".into(), Var::Many(vec![x.into()]));
            }
            settings(preset, scale, &v)
        };
        let default = root.path().join("runs/p");
        let prepare = |dir: &Path, s: serde_json::Value| prepare_run_dir(dir, &s, &default);
        let record = || std::fs::read_to_string(run.join("settings.json")).unwrap();
        prepare(&run, with("p", "cpu", "40", Some("10"))).unwrap();
        std::fs::write(run.join("steps.jsonl"), "{}\n").unwrap();
        // The same settings continue; a variable the preset added since is allowed, and one the
        // call no longer has stays in the record.
        prepare(&run, with("p", "cpu", "40", Some("10"))).unwrap();
        prepare(&run, with("p", "cpu", "40", None)).unwrap();
        assert!(record().contains("snap"), "{}", record());
        // Another preset, scale or value is refused, naming each difference; the record stays.
        let kept = record();
        let refused = |s: serde_json::Value| prepare(&run, s).unwrap_err().to_string();
        let e = refused(with("p", "gpu", "400", None));
        assert!(e.contains(r#"scale "cpu" there, "gpu" now"#), "{e}");
        assert!(e.contains(r#"`steps` = "40" there, "400" now"#), "{e}");
        assert!(e.contains("--run DIR"), "{e}");
        let e = refused(with("p", "cpu", "40", Some("20")));
        assert!(e.contains(r#"`snap` = ["10"] there, ["20"] now"#), "{e}");
        let e = refused(with("q", "cpu", "40", None));
        assert!(e.contains(r#"preset "p" there, "q" now"#), "{e}");
        assert!(
            !e.contains("--fresh"),
            "another preset's directory: only --run helps: {e}"
        );
        assert_eq!(record(), kept);
        // A record this task did not write is named, not trusted.
        let odd = root.path().join("odd");
        std::fs::create_dir_all(&odd).unwrap();
        std::fs::write(odd.join("settings.json"), r#"{"theme": "dark"}"#).unwrap();
        let e = prepare(&odd, with("p", "cpu", "40", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("odd/settings.json"), "{e}");
        // A directory with files but no record is not adopted (its files stay), except an older
        // run in the preset's default directory.
        let notes = root.path().join("notes");
        std::fs::create_dir_all(&notes).unwrap();
        std::fs::write(notes.join("prompts.jsonl"), "mine").unwrap();
        let e = prepare(&notes, with("p", "cpu", "40", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no settings.json"), "{e}");
        assert_eq!(
            std::fs::read_to_string(notes.join("prompts.jsonl")).unwrap(),
            "mine"
        );
        assert!(!notes.join("settings.json").exists());
        // --fresh removes this preset's run directory (renamed aside first: nothing is left
        // beside it), but not another preset's, nor a directory without a record.
        let e = remove_run_dir(&run, "q", &default).unwrap_err().to_string();
        assert!(e.contains("not a run directory of `q`"), "{e}");
        assert!(run.join("steps.jsonl").is_file());
        remove_run_dir(&run, "p", &default).unwrap();
        assert!(!run.exists() && !root.path().join(".run.removing").exists());
        remove_run_dir(&run, "p", &default).unwrap();
        let e = remove_run_dir(&odd, "p", &default).unwrap_err().to_string();
        assert!(e.contains("odd/settings.json: not the record"), "{e}");
        assert!(odd.join("settings.json").is_file());
        // A run directory from before records: only as the preset's default directory.
        std::fs::create_dir_all(&default).unwrap();
        std::fs::write(default.join("prompts.jsonl"), "").unwrap();
        std::fs::write(default.join("eval-prompts.jsonl"), "").unwrap();
        let moved = root.path().join("moved");
        std::fs::create_dir_all(&moved).unwrap();
        std::fs::write(moved.join("steps.jsonl"), "").unwrap();
        assert!(remove_run_dir(&moved, "p", &default).is_err());
        assert!(moved.join("steps.jsonl").is_file());
        prepare(&default, with("p", "cpu", "40", None)).unwrap();
        assert!(default.join("settings.json").is_file());
        std::fs::remove_file(default.join("settings.json")).unwrap();
        remove_run_dir(&default, "p", &default).unwrap();
        assert!(!default.exists());
        // A second claim of a held directory is refused until the first is released.
        let held = lock_run_dir(&run).unwrap();
        let e = lock_run_dir(&run).unwrap_err().to_string();
        assert!(e.contains("another `xtask exp`"), "{e}");
        drop(held);
        let held = lock_run_dir(&run).unwrap();
        // A directory holding only its lock is empty: --fresh removes it while it is held.
        remove_run_dir(&run, "p", &default).unwrap();
        assert!(!run.exists());
        drop(held);
        // A link is refused, and its target keeps its files.
        #[cfg(unix)]
        {
            prepare(&run, with("p", "cpu", "40", None)).unwrap();
            let link = root.path().join("link");
            std::os::unix::fs::symlink(&run, &link).unwrap();
            let e = remove_run_dir(&link, "p", &default)
                .unwrap_err()
                .to_string();
            assert!(e.contains("symbolic link"), "{e}");
            assert!(link.exists() && run.join("settings.json").is_file());
        }
    }

    #[test]
    fn a_refused_call_changes_nothing_and_builds_nothing() {
        // A workspace of its own: one preset and a prompts file. Every call below is refused
        // before `binary` would build or pick `infalign`, so none needs one.
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir_all(root.join("xtask/presets")).unwrap();
        std::fs::create_dir_all(root.join("assets")).unwrap();
        let prompts: String = (0..8)
            .map(|i| format!("{{\"prompt\": \"p{i}\"}}\n"))
            .collect();
        std::fs::write(root.join("assets/prompts.jsonl"), prompts).unwrap();
        let preset = |name: &str| {
            let text = "description = \"d\"\nclaim = \"c\"\n[scales.cpu]\nprompts = 2\n\
                        eval_prompts = 2\nsteps = 3\n[scales.gpu]\nprompts = 4\neval_prompts = 2\n\
                        steps = 30\n[[steps]]\nname = \"s\"\nargs = [\"generate\", \"--out\", \"{run}/x\"]\n\
                        creates = \"x\"\n";
            std::fs::write(root.join(format!("xtask/presets/{name}.toml")), text).unwrap();
        };
        preset("p");
        preset("q");
        let call = |name: &str, scale: &str, fresh: bool| Options {
            preset: name.into(),
            fresh,
            run: None,
            flags: RunFlags {
                scale: scale.into(),
                sets: Vec::new(),
                release: false,
            },
        };
        // A run directory of `p` at the cpu scale, with a finished step.
        let run_dir = root.join("runs/p");
        let mut v = Vars::new();
        for (k, x) in [("prompts", "2"), ("eval_prompts", "2"), ("steps", "3")] {
            v.insert(k.into(), Var::One(x.into()));
        }
        prepare_run_dir(&run_dir, &settings("p", "cpu", &v), &run_dir).unwrap();
        std::fs::write(run_dir.join("x"), "finished").unwrap();
        let files = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            (
                names,
                std::fs::read_to_string(dir.join("settings.json")).unwrap(),
            )
        };
        let before = files(&run_dir);
        // Another scale into it: refused, and neither the record nor the prompts change.
        let e = run(root, &call("p", "gpu", false)).unwrap_err().to_string();
        assert!(e.contains(r#"scale "cpu" there, "gpu" now"#), "{e}");
        // --fresh from another preset pointed at it: refused, nothing removed.
        let mut other = call("q", "cpu", true);
        other.run = Some(run_dir.clone());
        let e = run(root, &other).unwrap_err().to_string();
        assert!(e.contains("not a run directory of `q`"), "{e}");
        // Too many prompts asked: refused before the directory is touched.
        let mut many = call("p", "cpu", false);
        many.flags.sets = vec![("prompts".into(), "100".into())];
        assert!(run(root, &many).is_err());
        let mut after = files(&run_dir);
        after.0.retain(|n| n != ".exp.lock");
        assert_eq!(after, before);
        assert_eq!(
            std::fs::read_to_string(run_dir.join("x")).unwrap(),
            "finished"
        );
    }

    #[test]
    fn shipped_presets_parse_and_expand() {
        let root = crate::root();
        for name in presets(&root).unwrap() {
            let text =
                std::fs::read_to_string(root.join(format!("xtask/presets/{name}.toml"))).unwrap();
            let p: Preset = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            for (scale, table) in &p.scales {
                let mut v = vars();
                v.insert("prompts_file".into(), Var::One("p".into()));
                v.insert("eval_prompts_file".into(), Var::One("e".into()));
                for (k, x) in table {
                    v.insert(k.clone(), var(x).unwrap());
                }
                for s in &p.steps {
                    for b in bindings(s, &v).unwrap_or_else(|e| panic!("{name}/{scale}: {e}")) {
                        expand_args(&s.args, &b)
                            .unwrap_or_else(|e| panic!("{name}/{scale} `{}`: {e}", s.name));
                    }
                }
            }
        }
    }
}
