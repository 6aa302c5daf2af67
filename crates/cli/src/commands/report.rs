//! `infalign report --run DIR`: gathers every evaluated point under a run directory
//! (`points.jsonl` from `sweep`, `eval.json` from `eval`, at any depth) and writes one report
//! with a table of all points and plots of win rate (standard and inference-time) and reward
//! against KL, one curve per method: `report.md` (PNG figures) and a self-contained
//! `report.html` (inline SVG) in DIR. Prefix scorers trained inside DIR (`train-scorer`'s
//! `summary.json`) get a table of their held-out pairwise accuracy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use infalign_eval::curve::CurvePoint;
use infalign_eval::report::{
    Report, add_curves_named, add_paired, add_paired_at_kl, find_replicates,
};

/// Flags of `infalign report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run directory to gather and write into.
    #[arg(long)]
    pub run: PathBuf,
    /// Title of the report; default: the directory's name.
    #[arg(long)]
    pub title: Option<String>,
    /// A paired comparison `A vs B` of two points evaluated on the same prompts, each named
    /// `METHOD` or `METHOD@VALUE` (repeatable): the difference A − B of mean reward and win
    /// rates with a bootstrap interval over prompts.
    #[arg(long, value_name = "A vs B")]
    pub compare: Vec<String>,
    /// A paired comparison at matched KL `A vs B` (repeatable): A is a method with several
    /// points (say one per β), interpolated prompt by prompt at the KL of point B (`METHOD` or
    /// `METHOD@VALUE`); B's KL must lie within A's.
    #[arg(long, value_name = "A vs B")]
    pub compare_at_kl: Vec<String>,
    /// Seed of the paired bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A section `TITLE=SUBDIR` (repeatable): the points under `RUN/SUBDIR` get their own
    /// tables and plots under that title, for parts of a run that score different rewards.
    /// Without sections, all points of the run go into one.
    #[arg(long, value_name = "TITLE=SUBDIR")]
    pub section: Vec<String>,
}

/// Every file under `dir` (depth first, in name order, hidden entries skipped) whose name is one
/// of `names`.
fn walk(dir: &Path, names: &[&str], found: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if e.file_type()?.is_dir() {
            walk(&path, names, found)?;
        } else if names.iter().any(|n| name == *n) {
            found.push(path);
        }
    }
    Ok(())
}

/// Every point under `dir`, in path order.
pub fn gather(dir: &Path) -> Result<Vec<CurvePoint>> {
    let mut files = Vec::new();
    walk(dir, &["points.jsonl", "eval.json"], &mut files)?;
    let mut points = Vec::new();
    for f in files {
        if f.extension().is_some_and(|e| e == "jsonl") {
            points.extend(infalign_core::io::read_jsonl::<CurvePoint>(&f)?);
        } else {
            let text = infalign_core::io::read_to_string(&f)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", f.display()))?;
            let point = v.get("point").cloned().with_context(|| {
                format!(
                    "{}: no `point` (written by an older `infalign eval`?)",
                    f.display()
                )
            })?;
            points.push(
                serde_json::from_value(point)
                    .with_context(|| format!("{}: malformed `point`", f.display()))?,
            );
        }
    }
    Ok(points)
}

pub fn run(a: Args) -> Result<()> {
    let sections: Vec<(Option<String>, PathBuf)> = if a.section.is_empty() {
        vec![(None, a.run.clone())]
    } else {
        a.section
            .iter()
            .map(|s| {
                let (title, sub) = s
                    .split_once('=')
                    .with_context(|| format!("--section `{s}`: expected TITLE=SUBDIR"))?;
                Ok((Some(title.trim().to_string()), a.run.join(sub.trim())))
            })
            .collect::<Result<_>>()?
    };
    let mut parts = Vec::new();
    for (title, dir) in &sections {
        let points = gather(dir)?;
        if points.is_empty() {
            bail!(
                "no points.jsonl or eval.json under {} (run `infalign sweep` or `infalign eval` \
                 with --out inside it)",
                dir.display()
            );
        }
        parts.push((title, points));
    }
    let title = a.title.unwrap_or_else(|| {
        a.run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "infalign run".into())
    });
    let mut report = Report::new(title);
    let total: usize = parts.iter().map(|(_, p)| p.len()).sum();
    report.paragraph(format!(
        "{total} evaluated points gathered from `{}`.",
        a.run.display()
    ));
    let split = |flag: &str, list: &[String]| {
        list.iter()
            .map(|c| {
                c.split_once(" vs ")
                    .map(|(x, y)| (x.trim().to_string(), y.trim().to_string()))
                    .with_context(|| format!("--{flag} `{c}`: expected `A vs B`"))
            })
            .collect::<Result<Vec<_>>>()
    };
    let pairs = split("compare", &a.compare)?;
    let at_kl = split("compare-at-kl", &a.compare_at_kl)?;
    // A matched-KL comparison belongs to the first section with a point of method A and B.
    let home_at_kl = |(x, y): &(String, String)| {
        parts.iter().position(|(_, points)| {
            points.iter().any(|p| p.method == *x) && find_replicates(points, y).is_ok()
        })
    };
    if let Some((x, y)) = at_kl.iter().find(|p| home_at_kl(p).is_none()) {
        bail!("--compare-at-kl `{x} vs {y}`: no section holds points of `{x}` and the point `{y}`");
    }
    // Each comparison goes to the first section holding both of its points.
    let home = |(x, y): &(String, String)| {
        parts.iter().position(|(_, points)| {
            find_replicates(points, x).is_ok() && find_replicates(points, y).is_ok()
        })
    };
    if let Some(p) = pairs.iter().find(|p| home(p).is_none()) {
        // No section holds both: report the lookup error of the first section.
        let points = &parts[0].1;
        find_replicates(points, &p.0)?;
        find_replicates(points, &p.1)?;
        bail!(
            "--compare `{} vs {}`: the two points are in different sections",
            p.0,
            p.1
        );
    }
    for (i, (title, points)) in parts.iter().enumerate() {
        let prefix = match title {
            Some(t) => {
                report.heading(t.clone());
                format!("part{}-", i + 1)
            }
            None => String::new(),
        };
        add_curves_named(&mut report, points, &prefix)?;
        // The comparisons whose home is this section.
        let here = |list: &[(String, String)],
                    home: &dyn Fn(&(String, String)) -> Option<usize>| {
            list.iter()
                .filter(|p| home(p) == Some(i))
                .cloned()
                .collect::<Vec<_>>()
        };
        add_paired(&mut report, points, &here(&pairs, &home), a.seed)?;
        add_paired_at_kl(&mut report, points, &here(&at_kl, &home_at_kl), a.seed)?;
    }
    add_scorers(&mut report, &a.run)?;
    let (md, html) = report.write(&a.run)?;
    eprintln!("wrote {} and {}", md.display(), html.display());
    Ok(())
}

/// A table of every prefix scorer under `dir` (a `summary.json` with a held-out pairwise
/// accuracy): how well its value ranks complete rollouts of prompts it never trained on.
fn add_scorers(report: &mut Report, dir: &Path) -> Result<()> {
    let mut files = Vec::new();
    walk(dir, &["summary.json"], &mut files)?;
    let mut rows = Vec::new();
    for f in files {
        let text = infalign_core::io::read_to_string(&f)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", f.display()))?;
        let Some(acc) = v.get("heldout_pairwise_accuracy") else {
            continue;
        };
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let interval = v
            .get("heldout_pairwise_accuracy_interval")
            .and_then(|i| Some((i.get(0)?.as_f64()?, i.get(1)?.as_f64()?)));
        let name = f
            .parent()
            .and_then(|p| p.strip_prefix(dir).ok())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        rows.push(vec![
            format!("`{name}`"),
            num("heldout_prompts").map_or("–".into(), |x| format!("{x:.0}")),
            num("heldout_pairs").map_or("–".into(), |x| format!("{x:.0}")),
            match (acc.as_f64(), interval) {
                (Some(a), Some((lo, hi))) => format!("{a:.3} [{lo:.3}, {hi:.3}]"),
                (Some(a), None) => format!("{a:.3}"),
                _ => "–".into(),
            },
            num("heldout_mse").map_or("–".into(), |x| format!("{x:.4}")),
        ]);
    }
    if rows.is_empty() {
        return Ok(());
    }
    report.heading("Prefix scorers on held-out prompts");
    report.paragraph(
        "How often a scorer's value of a complete rollout orders two rollouts of the same \
         held-out prompt as their rewards do (pairs with equal rewards left out; 0.5 is \
         chance), with a 95% bootstrap interval over prompts, and the mean squared error of \
         the value against the reward it was trained on.",
    );
    report.table(
        &[
            "scorer",
            "held-out prompts",
            "pairs",
            "pairwise accuracy",
            "MSE",
        ],
        rows,
    );
    Ok(())
}
