//! `infalign report --run DIR`: gathers every evaluated point under a run directory
//! (`points.jsonl` from `sweep`, `eval.json` from `eval`, at any depth) and writes one report
//! with a table of all points and plots of win rate (standard and inference-time) and reward
//! against KL, one curve per method: `report.md` (PNG figures) and a self-contained
//! `report.html` (inline SVG) in DIR.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use infalign_eval::curve::CurvePoint;
use infalign_eval::report::{Report, add_curves, add_paired};

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
    /// Seed of the paired bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
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
            walk(&path, found)?;
        } else if name == "points.jsonl" || name == "eval.json" {
            found.push(path);
        }
    }
    Ok(())
}

/// Every point under `dir`, in path order.
pub fn gather(dir: &Path) -> Result<Vec<CurvePoint>> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
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
    let points = gather(&a.run)?;
    if points.is_empty() {
        bail!(
            "no points.jsonl or eval.json under {} (run `infalign sweep` or `infalign eval` \
             with --out inside it)",
            a.run.display()
        );
    }
    let title = a.title.unwrap_or_else(|| {
        a.run
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "infalign run".into())
    });
    let mut report = Report::new(title);
    report.paragraph(format!(
        "{} evaluated points gathered from `{}`.",
        points.len(),
        a.run.display()
    ));
    add_curves(&mut report, &points)?;
    let pairs = a
        .compare
        .iter()
        .map(|c| {
            c.split_once(" vs ")
                .map(|(x, y)| (x.trim().to_string(), y.trim().to_string()))
                .with_context(|| format!("--compare `{c}`: expected `A vs B`"))
        })
        .collect::<Result<Vec<_>>>()?;
    add_paired(&mut report, &points, &pairs, a.seed)?;
    let (md, html) = report.write(&a.run)?;
    eprintln!("wrote {} and {}", md.display(), html.display());
    Ok(())
}
