//! Run reports: a document of headings, paragraphs, tables and figures written as `report.md`
//! (figures as PNG files beside it) and as a self-contained `report.html` (figures inlined as
//! SVG, no external style sheet or script).
//!
//! Invariants: both files are written atomically into the run directory; text is escaped in
//! HTML; the same report gives the same bytes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::curve::{CurvePoint, KlKind, procedure_name, procedures, reward_plot, win_rate_plot};
use crate::paired::{Difference, Measure, Outcomes, paired_difference, replicated_difference};
use crate::plot::LinePlot;
use crate::{EvalError, Ties};

/// One block of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A heading of level 2 or 3.
    Heading(u8, String),
    /// A paragraph of plain text (`code` spans are kept as such).
    Paragraph(String),
    /// A table: header cells, then rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A plot, saved as `<stem>.svg` and `<stem>.png`.
    Figure(LinePlot, String),
}

/// A report under construction.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The title (level-1 heading).
    pub title: String,
    /// The blocks in order.
    pub blocks: Vec<Block>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes text and turns `code` spans into `<code>` elements.
fn inline_html(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

const STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;\
color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;\
padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{\
text-align:left}code{background:#f4f4f4;padding:1px 3px}figure{margin:1em 0}svg{max-width:100%;\
height:auto}";

impl Report {
    /// An empty report.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            blocks: Vec::new(),
        }
    }

    /// Adds a heading (level 2).
    pub fn heading(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Heading(2, text.into()));
        self
    }

    /// Adds a paragraph.
    pub fn paragraph(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Paragraph(text.into()));
        self
    }

    /// Adds a table.
    pub fn table(&mut self, header: &[&str], rows: Vec<Vec<String>>) -> &mut Self {
        self.blocks.push(Block::Table(
            header.iter().map(|s| (*s).to_string()).collect(),
            rows,
        ));
        self
    }

    /// Adds a figure saved under `stem` (a file name without extension).
    pub fn figure(&mut self, plot: LinePlot, stem: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Figure(plot, stem.into()));
        self
    }

    /// The Markdown text (figures as links to their PNG files).
    pub fn to_markdown(&self) -> String {
        let mut md = format!("# {}\n", self.title);
        for b in &self.blocks {
            md.push('\n');
            match b {
                Block::Heading(level, t) => {
                    let _ = writeln!(md, "{} {t}", "#".repeat(usize::from(*level)));
                }
                Block::Paragraph(t) => {
                    let _ = writeln!(md, "{t}");
                }
                Block::Table(header, rows) => {
                    let cells =
                        |r: &[String]| r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ");
                    let _ = writeln!(md, "| {} |", cells(header));
                    let rule: Vec<&str> = (0..header.len())
                        .map(|i| if i == 0 { "---" } else { "---:" })
                        .collect();
                    let _ = writeln!(md, "|{}|", rule.join("|"));
                    for r in rows {
                        let _ = writeln!(md, "| {} |", cells(r));
                    }
                }
                Block::Figure(plot, stem) => {
                    let _ = writeln!(md, "![{}]({stem}.png)", plot.title);
                }
            }
        }
        md
    }

    /// The HTML document, given each figure's SVG in block order.
    fn to_html(&self, svgs: &[String]) -> String {
        let mut h = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n\
             <style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            escape(&self.title),
            inline_html(&self.title)
        );
        let mut svg = svgs.iter();
        for b in &self.blocks {
            match b {
                Block::Heading(level, t) => {
                    let _ = writeln!(h, "<h{level}>{}</h{level}>", inline_html(t));
                }
                Block::Paragraph(t) => {
                    let _ = writeln!(h, "<p>{}</p>", inline_html(t));
                }
                Block::Table(header, rows) => {
                    h.push_str("<table>\n<tr>");
                    for c in header {
                        let _ = write!(h, "<th>{}</th>", inline_html(c));
                    }
                    h.push_str("</tr>\n");
                    for r in rows {
                        h.push_str("<tr>");
                        for c in r {
                            let _ = write!(h, "<td>{}</td>", inline_html(c));
                        }
                        h.push_str("</tr>\n");
                    }
                    h.push_str("</table>\n");
                }
                Block::Figure(plot, _) => {
                    let body = svg.next().map(String::as_str).unwrap_or_default();
                    let _ = writeln!(
                        h,
                        "<figure>\n{body}\n<figcaption>{}</figcaption>\n</figure>",
                        inline_html(&plot.title)
                    );
                }
            }
        }
        h.push_str("</body>\n</html>\n");
        h
    }

    /// Writes `report.md`, `report.html` and every figure (SVG and PNG) into `dir`; returns the
    /// two report paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), EvalError> {
        std::fs::create_dir_all(dir).map_err(|e| infalign_core::CoreError::io(dir, e))?;
        let mut svgs = Vec::new();
        for b in &self.blocks {
            if let Block::Figure(plot, stem) = b {
                let (svg, _) = plot.write(dir, stem)?;
                svgs.push(infalign_core::io::read_to_string(&svg)?);
            }
        }
        let md = dir.join("report.md");
        let html = dir.join("report.html");
        infalign_core::io::write_atomic(&md, self.to_markdown().as_bytes())?;
        infalign_core::io::write_atomic(&html, self.to_html(&svgs).as_bytes())?;
        Ok((md, html))
    }
}

fn fmt_interval(w: crate::Interval) -> String {
    format!("{:.3} [{:.3}, {:.3}]", w.mean, w.low, w.high)
}

/// Formats a KL value with its provenance, e.g. `0.412 ± 0.020 (exact per-token)`.
pub fn fmt_kl(kl: &crate::curve::Kl) -> String {
    let v = match (kl.kind, kl.stderr) {
        (KlKind::Bound, _) => format!("≤ {:.3}", kl.value),
        (_, Some(se)) => format!("{:.3} ± {:.3}", kl.value, se),
        (_, None) => format!("{:.3}", kl.value),
    };
    format!("{v} ({})", kl.kind.label())
}

/// Adds the standard sections for a set of curve points: a table of every point, then win rate
/// against KL under each measured procedure and reward against KL.
pub fn add_curves(report: &mut Report, points: &[CurvePoint]) -> Result<(), EvalError> {
    add_curves_named(report, points, "")
}

/// [`add_curves`] with every figure's file name starting with `prefix` (several sections of one
/// report).
pub fn add_curves_named(
    report: &mut Report,
    points: &[CurvePoint],
    prefix: &str,
) -> Result<(), EvalError> {
    if points.is_empty() {
        return Err(EvalError::Invalid {
            field: "points",
            message: "no evaluated points to report".into(),
        });
    }
    let procs = procedures(points);
    let mut measures: Vec<&String> = points.iter().flat_map(|p| p.measures.keys()).collect();
    measures.sort();
    measures.dedup();
    let mut header: Vec<String> = ["method", "setting", "KL", "mean reward"]
        .map(String::from)
        .to_vec();
    header.extend(measures.iter().map(|m| format!("mean {m}")));
    let stats = points.iter().any(|p| p.sample_stats.is_some());
    if stats {
        header.extend(["tokens (base)".to_string(), "reward 0 (base)".to_string()]);
    }
    header.extend(
        procs
            .iter()
            .map(|p| format!("{} win rate", procedure_name(*p))),
    );
    header.push("gain fraction".into());
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| -> Result<Vec<String>, EvalError> {
            let mut row = vec![
                p.method.clone(),
                match (&p.param, p.value, p.replicate) {
                    (Some(k), Some(v), Some(r)) => format!("{k} = {v}, replicate {r}"),
                    (Some(k), Some(v), None) => format!("{k} = {v}"),
                    (_, _, Some(r)) => format!("replicate {r}"),
                    _ => "-".into(),
                },
                fmt_kl(&p.kl),
                format!("{:.4}", p.mean_reward),
            ];
            row.extend(measures.iter().map(|m| {
                p.measures
                    .get(*m)
                    .map_or_else(|| "-".into(), |v| format!("{v:.4}"))
            }));
            if stats {
                let with_base = |f: fn(&crate::curve::SampleStats) -> f64, digits: usize| match (
                    &p.sample_stats,
                    &p.base_sample_stats,
                ) {
                    (Some(s), Some(b)) => format!("{:.*} ({:.*})", digits, f(s), digits, f(b)),
                    (Some(s), None) => format!("{:.*}", digits, f(s)),
                    _ => "-".into(),
                };
                row.push(with_base(|s| s.mean_tokens, 1));
                row.push(with_base(|s| s.zero_reward_fraction, 2));
            }
            row.extend(procs.iter().map(|&pr| {
                p.win_rate_under(pr)
                    .map(fmt_interval)
                    .unwrap_or_else(|| "-".into())
            }));
            row.push(gain_share_cell(p));
            Ok(row)
        })
        .collect::<Result<_, EvalError>>()?;
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    report.heading("Results").table(&header_refs, rows);
    let strict = points.iter().filter(|p| p.ties == Ties::Strict).count();
    let ties = match strict {
        0 => "Win rates count ties as one half".to_string(),
        n if n == points.len() => "Win rates count ties as losses (strict, CD's convention), \
             so a reward with many ties (a length at its cap) keeps them below what the \
             theoretical curves, drawn for continuous rewards, show"
            .to_string(),
        n => format!(
            "Win rates count ties as one half, except for {n} points that count them as losses"
        ),
    };
    report.paragraph(format!(
        "{ties}; intervals are 95% bootstrap intervals over prompts. KL marked `bound` is an \
         upper bound (best-of-N: ln N − (N−1)/N; blockwise CD: that per block), so those points \
         sit at most that far right. The gain fraction is (WR − ½) / (WR* − ½) for the standard \
         win rate, WR* that of the best policy at the same KL on a reward without ties (the \
         analytic tool): the share of the largest gain any policy at that KL could reach. At a KL \
         bound it bounds the true fraction (≥ above a win rate of ½, ≤ below); it ignores the \
         KL estimate's own error; with many ties (a length at its cap) WR* is out of reach, so \
         it understates; `-` beyond the tool's reach (KL above ln 20,000). Grey curves are theory: best-of-N against one base sample, \
         and the analytic tool's prediction for the identity transform of a calibrated reward."
    ));
    report.heading("Curves");
    for pr in procs {
        if let Some(plot) = win_rate_plot(points, pr) {
            let stem = format!("{prefix}win-rate-{}", procedure_name(pr));
            report.figure(plot, stem);
        }
    }
    if let Some(plot) = reward_plot(points) {
        report.figure(plot, format!("{prefix}reward"));
    }
    Ok(())
}

/// The "gain fraction" cell of a point ([`crate::curve::gain_fraction_at_kl`]): `-` for the
/// base model, points at zero KL, and KLs beyond the analytic tool's reach. At a KL bound the
/// true KL is lower, so the optimum's gain is smaller: the shown fraction bounds the true one
/// from below when the win rate is above ½ (≥) and from above when it is below (≤).
fn gain_share_cell(p: &CurvePoint) -> String {
    if p.kl.kind == KlKind::Zero {
        return "-".into();
    }
    match crate::curve::gain_fraction_at_kl(p.win_rate, p.kl.value.max(0.0)) {
        Ok(Some(share)) if p.kl.kind == KlKind::Bound => {
            let side = if p.win_rate.mean >= 0.5 { "≥" } else { "≤" };
            format!("{side} {}", fmt_interval(share))
        }
        Ok(Some(share)) => fmt_interval(share),
        Ok(None) | Err(_) => "-".into(),
    }
}

/// The points a selector names: `METHOD`, or `METHOD@VALUE` when the method has several points
/// (its swept parameter's value). An error when it names none.
fn select<'a>(points: &'a [CurvePoint], selector: &str) -> Result<Vec<&'a CurvePoint>, EvalError> {
    let (method, value) = match selector.rsplit_once('@') {
        Some((m, v)) => {
            let v: f64 = v.trim().parse().map_err(|_| EvalError::Invalid {
                field: "compare",
                message: format!("`{selector}`: `{v}` after @ is not a number"),
            })?;
            (m.trim(), Some(v))
        }
        None => (selector.trim(), None),
    };
    let found: Vec<&CurvePoint> = points
        .iter()
        .filter(|p| p.method == method && value.is_none_or(|v| p.value == Some(v)))
        .collect();
    if found.is_empty() {
        let mut methods: Vec<&str> = points.iter().map(|p| p.method.as_str()).collect();
        methods.dedup();
        return Err(EvalError::Invalid {
            field: "compare",
            message: format!(
                "`{selector}` names no point; methods: {}",
                methods.join(", ")
            ),
        });
    }
    Ok(found)
}

fn ambiguous(selector: &str, many: &[&CurvePoint]) -> EvalError {
    EvalError::Invalid {
        field: "compare",
        message: format!(
            "`{selector}` names {} points; add @VALUE (one of {})",
            many.len(),
            many.iter()
                .filter_map(|p| p.value.map(|v| v.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The point a comparison names (`METHOD` or `METHOD@VALUE`); an error when it names none or
/// several.
pub fn find_point<'a>(
    points: &'a [CurvePoint],
    selector: &str,
) -> Result<&'a CurvePoint, EvalError> {
    match select(points, selector)?.as_slice() {
        [one] => Ok(one),
        many => Err(ambiguous(selector, many)),
    }
}

/// The points a comparison names (`METHOD` or `METHOD@VALUE`): one, or one per replicate of a method trained
/// several times (each with its own `replicate`, in increasing order).
pub fn find_replicates<'a>(
    points: &'a [CurvePoint],
    selector: &str,
) -> Result<Vec<&'a CurvePoint>, EvalError> {
    let mut found = select(points, selector)?;
    if found.len() > 1 {
        found.sort_by_key(|p| p.replicate);
        let distinct = found.iter().all(|p| p.replicate.is_some())
            && found.windows(2).all(|w| w[0].replicate != w[1].replicate);
        if !distinct {
            return Err(ambiguous(selector, &found));
        }
    }
    Ok(found)
}

/// The point whose per-prompt outcomes are the mean of `points`' (replicates of one method,
/// evaluated on the same prompts), prompt by prompt; its KL is their mean. Named "(mean of N
/// replicates)"; points without replicates (one side shared by every replicate of the other)
/// keep their method's name, with "(mean at N replicates' KLs)" when they were interpolated at
/// different KLs.
pub fn average_replicates(points: &[&CurvePoint]) -> Result<CurvePoint, EvalError> {
    use crate::curve::ProcedureOutcomes;
    let Some(first) = points.first() else {
        return Err(EvalError::Invalid {
            field: "compare",
            message: "no replicates to average".into(),
        });
    };
    let per: Vec<&crate::curve::PerPrompt> = points
        .iter()
        .map(|p| {
            p.per_prompt
                .as_ref()
                .filter(|q| {
                    first
                        .per_prompt
                        .as_ref()
                        .is_some_and(|f| f.prompts_key == q.prompts_key)
                })
                .ok_or_else(|| EvalError::Invalid {
                    field: "compare",
                    message: format!(
                        "`{}`'s replicates lack per-prompt outcomes on the same prompts",
                        p.method
                    ),
                })
        })
        .collect::<Result<_, _>>()?;
    let n = points.len() as f64;
    let mean_of = |rows: Vec<&Vec<f64>>| -> Vec<f64> {
        let len = rows.iter().map(|r| r.len()).min().unwrap_or(0);
        (0..len)
            .map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64)
            .collect()
    };
    let mean_reward = mean_of(per.iter().map(|q| &q.mean_reward).collect());
    let win_rates = per[0]
        .win_rates
        .iter()
        .filter_map(|o| {
            let rows: Vec<&Vec<f64>> = per
                .iter()
                .filter_map(|q| {
                    q.win_rates
                        .iter()
                        .find(|x| x.procedure == o.procedure)
                        .map(|x| &x.per_prompt)
                })
                .collect();
            (rows.len() == per.len()).then(|| ProcedureOutcomes {
                procedure: o.procedure,
                per_prompt: mean_of(rows),
            })
        })
        .collect();
    // Only the per-prompt outcomes, KL and mean reward are averaged; the rest is cleared or
    // summarised, so that nothing of one replicate passes for the mean.
    let mut avg = (*first).clone();
    // Interpolated replicates may bracket their KL with different points: name what is common.
    let method = if points.iter().all(|p| p.method == first.method) {
        first.method.clone()
    } else {
        match first.method.split_once(" between ") {
            Some((common, _)) => common.to_string(),
            None => first.method.clone(),
        }
    };
    // Points without replicates are one side shared by every replicate of the other (a
    // decoder, not trained with the seeds): one point stands for itself; one path interpolated
    // at each replicate's KL is a mean at those KLs.
    avg.method = if points.iter().any(|p| p.replicate.is_some()) {
        format!("{method} (mean of {} replicates)", points.len())
    } else if points.iter().all(|p| p.kl.value == first.kl.value) {
        method
    } else {
        format!("{method} (mean at {} replicates' KLs)", points.len())
    };
    avg.replicate = None;
    avg.inference.clear();
    avg.measures.clear();
    avg.sample_stats = None;
    avg.win_rate = crate::Interval {
        mean: points.iter().map(|p| p.win_rate.mean).sum::<f64>() / n,
        low: points
            .iter()
            .map(|p| p.win_rate.low)
            .fold(f64::INFINITY, f64::min),
        high: points
            .iter()
            .map(|p| p.win_rate.high)
            .fold(f64::NEG_INFINITY, f64::max),
    };
    avg.kl.value = points.iter().map(|p| p.kl.value).sum::<f64>() / n;
    avg.kl.stderr = None;
    avg.mean_reward = mean_reward.iter().sum::<f64>() / mean_reward.len().max(1) as f64;
    avg.per_prompt = Some(crate::curve::PerPrompt {
        prompts_key: per[0].prompts_key.clone(),
        mean_reward,
        win_rates,
    });
    Ok(avg)
}

/// A point's name in a comparison: method, setting, replicate and KL.
fn point_name(p: &CurvePoint) -> String {
    let kl = match p.kl.kind {
        KlKind::Bound => format!("KL ≤ {:.2}", p.kl.value),
        _ => format!("KL {:.2}", p.kl.value),
    };
    let replicate = p
        .replicate
        .map_or_else(String::new, |r| format!("; replicate {r}"));
    match (&p.param, p.value) {
        (Some(k), Some(v)) => format!("{} ({k} = {v}{replicate}; {kl})", p.method),
        _ => format!("{} ({kl}{replicate})", p.method),
    }
}

fn verdict(d: &Difference) -> &'static str {
    if d.excludes_zero() {
        if d.mean > 0.0 { "A better" } else { "B better" }
    } else {
        "inconclusive"
    }
}

fn difference_row(label: &str, measure: &str, d: &Difference, verdict: &str) -> Vec<String> {
    vec![
        label.to_string(),
        measure.to_string(),
        d.prompts.to_string(),
        format!("{:+.3} [{:+.3}, {:+.3}]", d.mean, d.low, d.high),
        verdict.to_string(),
    ]
}

/// The per-prompt outcomes of two points evaluated on the same prompts, by measure: mean reward
/// and the win rate under every procedure both measured, A's then B's.
fn paired_outcomes(
    a: &CurvePoint,
    b: &CurvePoint,
) -> Result<Vec<(String, Outcomes, Outcomes)>, EvalError> {
    let (Some(pa), Some(pb)) = (&a.per_prompt, &b.per_prompt) else {
        return Err(EvalError::Invalid {
            field: "compare",
            message: format!(
                "`{}` and `{}`: per-prompt outcomes missing (evaluated by an older infalign?)",
                a.method, b.method
            ),
        });
    };
    if pa.prompts_key != pb.prompts_key {
        return Err(EvalError::Invalid {
            field: "compare",
            message: format!(
                "`{}` and `{}` were evaluated on different prompts: no paired comparison",
                a.method, b.method
            ),
        });
    }
    let mut out = vec![(
        "mean reward".to_string(),
        Outcomes::new(Measure::MeanReward, pa.mean_reward.clone())?,
        Outcomes::new(Measure::MeanReward, pb.mean_reward.clone())?,
    )];
    for oa in &pa.win_rates {
        let Some(vb) = b.outcomes_under(oa.procedure) else {
            continue;
        };
        let measure = Measure::WinRate {
            procedure: oa.procedure,
            ties: a.ties,
        };
        out.push((
            format!("{} win rate", procedure_name(oa.procedure)),
            Outcomes::new(measure, oa.per_prompt.clone())?,
            Outcomes::new(measure, vb.to_vec())?,
        ));
    }
    Ok(out)
}

/// The paired differences `A − B` of two points evaluated on the same prompts, by measure
/// ([`paired_outcomes`]), each with a bootstrap interval over prompts that resamples the same
/// prompts for both ([`crate::paired`]).
fn paired_differences(
    a: &CurvePoint,
    b: &CurvePoint,
    seed: u64,
) -> Result<Vec<(String, Difference)>, EvalError> {
    paired_outcomes(a, b)?
        .into_iter()
        .map(|(m, oa, ob)| Ok((m, paired_difference(&oa, &ob, seed)?)))
        .collect()
}

/// The rows of the paired comparison `A − B`, with a verdict each: the mean reward and the win
/// rate under every procedure both points measured, each with a bootstrap interval over prompts
/// that resamples the same prompts for both ([`crate::paired`]).
pub fn paired_rows(
    a: &CurvePoint,
    b: &CurvePoint,
    seed: u64,
) -> Result<Vec<Vec<String>>, EvalError> {
    let label = format!("{} − {}", point_name(a), point_name(b));
    Ok(paired_differences(a, b, seed)?
        .iter()
        .map(|(m, d)| difference_row(&label, m, d, verdict(d)))
        .collect())
}

/// The rows of a comparison between two methods trained several times: one comparison per
/// replicate (replicate r of A against replicate r of B, on the same prompts, or a side without
/// replicates against each replicate of the other), then the
/// comparison of their means ([`average_replicates`] names the two sides). The mean's
/// difference is over all replicates and prompts, and its interval the two-level (seeds ×
/// prompts) bootstrap of [`replicated_difference`], which carries the seed-to-seed variation as
/// well as the prompts'; its verdict is that interval's. A measure some replicate lacks is left
/// out of the mean. One pair gives [`paired_rows`] alone.
pub fn replicated_rows(
    pairs: &[(CurvePoint, CurvePoint)],
    seed: u64,
) -> Result<Vec<Vec<String>>, EvalError> {
    if let [(a, b)] = pairs {
        return paired_rows(a, b, seed);
    }
    let mut rows = Vec::new();
    let mut each = Vec::new();
    for (a, b) in pairs {
        rows.extend(paired_rows(a, b, seed)?);
        each.push(paired_outcomes(a, b)?);
    }
    let a = average_replicates(&pairs.iter().map(|p| &p.0).collect::<Vec<_>>())?;
    let b = average_replicates(&pairs.iter().map(|p| &p.1).collect::<Vec<_>>())?;
    let label = format!("{} − {}", point_name(&a), point_name(&b));
    for (measure, _, _) in each.first().into_iter().flatten() {
        let (oa, ob): (Vec<Outcomes>, Vec<Outcomes>) = each
            .iter()
            .filter_map(|e| {
                e.iter()
                    .find(|(m, _, _)| m == measure)
                    .map(|(_, oa, ob)| (oa.clone(), ob.clone()))
            })
            .unzip();
        if oa.len() < pairs.len() {
            continue;
        }
        let d = replicated_difference(&oa, &ob, seed)?;
        rows.push(difference_row(&label, measure, &d, verdict(&d)));
    }
    Ok(rows)
}

/// Method `a`'s points (its KL path, at least two, evaluated on the same prompts) interpolated
/// at `b`'s KL: a point whose per-prompt outcomes are, prompt by prompt, the linear
/// interpolation between the two points whose KL brackets `b`'s ([`crate::paired::Path`]), for
/// a paired comparison with `b` at matched KL. An error names the path's KL range when `b`'s KL
/// lies outside it.
pub fn interpolate_at_kl(a: &[&CurvePoint], b: &CurvePoint) -> Result<CurvePoint, EvalError> {
    use crate::curve::{Kl, PerPrompt, ProcedureOutcomes};
    use crate::paired::{Path as KlPath, PathPoint};
    let mut path: Vec<&CurvePoint> = a.to_vec();
    path.sort_by(|x, y| x.kl.value.total_cmp(&y.kl.value));
    let (Some(&first), true) = (path.first(), path.len() >= 2) else {
        return Err(EvalError::Invalid {
            field: "compare",
            message: "a matched-KL comparison needs at least two points of method A".into(),
        });
    };
    let per = |p: &CurvePoint| -> Result<PerPrompt, EvalError> {
        p.per_prompt.clone().ok_or_else(|| EvalError::Invalid {
            field: "compare",
            message: format!("`{}`: per-prompt outcomes missing", p.method),
        })
    };
    let first_per = per(first)?;
    for p in &path {
        if per(p)?.prompts_key != first_per.prompts_key {
            return Err(EvalError::Invalid {
                field: "compare",
                message: format!(
                    "`{}`'s points were evaluated on different prompts",
                    p.method
                ),
            });
        }
    }
    let kl = b.kl.value;
    let at = |measure: Measure, values: &dyn Fn(&CurvePoint) -> Option<Vec<f64>>| {
        let points = path
            .iter()
            .map(|p| {
                let v = values(p).ok_or_else(|| EvalError::Invalid {
                    field: "compare",
                    message: format!("`{}` lacks a measure its path needs", p.method),
                })?;
                Ok(PathPoint {
                    kl: p.kl.value,
                    outcomes: Outcomes::new(measure, v)?,
                })
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        KlPath::new(points)?.outcomes_at(kl)
    };
    let mean = at(Measure::MeanReward, &|p| {
        p.per_prompt.as_ref().map(|q| q.mean_reward.clone())
    })?;
    let mut win_rates = Vec::new();
    for o in &first_per.win_rates {
        if path.iter().any(|p| p.outcomes_under(o.procedure).is_none()) {
            continue;
        }
        let measure = Measure::WinRate {
            procedure: o.procedure,
            ties: first.ties,
        };
        let v = at(measure, &|p| {
            p.outcomes_under(o.procedure).map(<[f64]>::to_vec)
        })?;
        win_rates.push(ProcedureOutcomes {
            procedure: o.procedure,
            per_prompt: v.values().to_vec(),
        });
    }
    let setting = |p: &CurvePoint| match (&p.param, p.value) {
        (Some(k), Some(v)) => format!("{k} = {v}"),
        _ => "-".into(),
    };
    let j = path
        .partition_point(|p| p.kl.value < kl)
        .clamp(1, path.len() - 1);
    let mean_values = mean.values().to_vec();
    Ok(CurvePoint {
        method: format!(
            "{} interpolated between {} and {}",
            first.method,
            setting(path[j - 1]),
            setting(path[j])
        ),
        param: None,
        value: None,
        kl: Kl {
            value: kl,
            stderr: None,
            kind: first.kl.kind,
        },
        mean_reward: mean_values.iter().sum::<f64>() / mean_values.len().max(1) as f64,
        base_mean_reward: first.base_mean_reward,
        ties: first.ties,
        win_rate: first.win_rate,
        inference: Vec::new(),
        measures: Default::default(),
        sample_stats: None,
        base_sample_stats: None,
        prompts: first.prompts,
        samples_per_prompt: first.samples_per_prompt,
        per_prompt: Some(PerPrompt {
            prompts_key: first_per.prompts_key,
            mean_reward: mean_values,
            win_rates,
        }),
        replicate: None,
    })
}

/// Adds a table of paired comparisons at matched KL: for each `(A, B)`, every point of method
/// `A` (its KL path) interpolated at `B`'s KL ([`interpolate_at_kl`]) against `B`. With
/// replicates on both sides, replicate r of A's path meets replicate r of B (an error names a
/// missing one); a side without replicates (a decoder's path, or one B) meets every replicate
/// of the other. The choice is made once per comparison, never replicate by replicate.
pub fn add_paired_at_kl(
    report: &mut Report,
    points: &[CurvePoint],
    pairs: &[(String, String)],
    seed: u64,
) -> Result<(), EvalError> {
    let rows = paired_rows_of(pairs, |a, b| {
        let path: Vec<&CurvePoint> = points.iter().filter(|p| p.method == a.trim()).collect();
        let mut seeds: Vec<u64> = path.iter().filter_map(|p| p.replicate).collect();
        seeds.sort_unstable();
        seeds.dedup();
        let of = |replicate: Option<u64>| -> Vec<&CurvePoint> {
            path.iter()
                .copied()
                .filter(|p| p.replicate == replicate)
                .collect()
        };
        if !seeds.is_empty() && !of(None).is_empty() {
            return Err(EvalError::Invalid {
                field: "compare",
                message: format!(
                    "`{a}` has points with and without replicates: name one kind per method"
                ),
            });
        }
        let mut matched = Vec::new();
        for b in find_replicates(points, b)? {
            // A's path for each of its replicates when B has none; the replicate of B's own
            // seed when both have them; A's one path when A has none.
            let paths: Vec<Vec<&CurvePoint>> = match (b.replicate, seeds.is_empty()) {
                (None, false) => seeds.iter().map(|&r| of(Some(r))).collect(),
                (Some(r), false) => {
                    let own = of(Some(r));
                    if own.is_empty() {
                        return Err(EvalError::Invalid {
                            field: "compare",
                            message: format!(
                                "`{a}` has no replicate {r} to meet replicate {r} of `{}` \
                                 (its replicates: {seeds:?})",
                                b.method
                            ),
                        });
                    }
                    vec![own]
                }
                (_, true) => vec![of(None)],
            };
            for path in paths {
                let mut at = interpolate_at_kl(&path, b).map_err(|e| match e {
                    // Name the comparison and the point whose KL the path does not reach.
                    EvalError::OutOfRange {
                        value, low, high, ..
                    } => EvalError::Invalid {
                        field: "compare",
                        message: format!(
                            "`{a}`'s KL path{} spans [{low}, {high}], which does not cover \
                             the KL {value} of {}: extend the path or compare at another \
                             point",
                            path.first()
                                .and_then(|p| p.replicate)
                                .map_or_else(String::new, |r| format!(" (replicate {r})")),
                            point_name(b)
                        ),
                    },
                    e => e,
                })?;
                at.replicate = path.first().and_then(|p| p.replicate);
                matched.push((at, b.clone()));
            }
        }
        replicated_rows(&matched, seed)
    })?;
    if !rows.is_empty() {
        paired_table(
            report,
            "Paired comparisons at matched KL",
            "A's points along its KL path (one per setting) interpolated at B's KL, prompt by \
             prompt, linearly between the two that bracket it, then differenced with B on the \
             same prompts with a 95% percentile-bootstrap interval over prompts. The \
             interpolation assumes the outcome changes linearly in KL between the two points. \
             Methods trained with several seeds are compared seed by seed (a side without seeds, \
             such as a decoder, against each seed of the other), then by their mean, whose \
             interval resamples the seeds as well as the prompts.",
            rows,
        );
    }
    Ok(())
}

/// The rows of every comparison in `pairs`, in order.
fn paired_rows_of(
    pairs: &[(String, String)],
    rows_of: impl Fn(&str, &str) -> Result<Vec<Vec<String>>, EvalError>,
) -> Result<Vec<Vec<String>>, EvalError> {
    let mut rows = Vec::new();
    for (a, b) in pairs {
        rows.extend(rows_of(a, b)?);
    }
    Ok(rows)
}

/// A table of paired-difference rows under `heading` and `text`.
fn paired_table(report: &mut Report, heading: &str, text: &str, rows: Vec<Vec<String>>) {
    report.heading(heading);
    report.paragraph(text);
    report.table(
        &[
            "A − B",
            "measure",
            "prompts",
            "difference [95% interval]",
            "verdict",
        ],
        rows,
    );
}

/// Adds a table of paired comparisons, one `(A, B)` selector pair each ([`find_point`]).
pub fn add_paired(
    report: &mut Report,
    points: &[CurvePoint],
    pairs: &[(String, String)],
    seed: u64,
) -> Result<(), EvalError> {
    let rows = paired_rows_of(pairs, |a_sel, b_sel| {
        let (a, b) = (
            find_replicates(points, a_sel)?,
            find_replicates(points, b_sel)?,
        );
        // One side with no replicates (a decoder, not trained with the seeds) is compared with
        // every replicate of the other.
        let shared = |side: &[&CurvePoint]| match side {
            [one] if one.replicate.is_none() => Some((*one).clone()),
            _ => None,
        };
        let matched = match (shared(&a), shared(&b)) {
            (Some(a), _) => b.iter().map(|b| (a.clone(), (*b).clone())).collect(),
            (None, Some(b)) => a.iter().map(|a| ((*a).clone(), b.clone())).collect(),
            (None, None) => a
                .iter()
                .map(|a| {
                    let b = b
                        .iter()
                        .find(|b| b.replicate == a.replicate)
                        .ok_or_else(|| EvalError::Invalid {
                            field: "compare",
                            message: format!(
                                "`{a_sel}`'s replicate {:?} has no counterpart in `{b_sel}`",
                                a.replicate
                            ),
                        })?;
                    Ok(((*a).clone(), (*b).clone()))
                })
                .collect::<Result<Vec<_>, EvalError>>()?,
        };
        replicated_rows(&matched, seed)
    })?;
    if rows.is_empty() {
        return Ok(());
    }
    paired_table(
        report,
        "Paired comparisons",
        "A − B on the same prompts: the difference of the two methods' per-prompt outcomes, with \
         a 95% percentile-bootstrap interval over prompts that resamples the same prompts for \
         both. Methods trained with several seeds are compared seed by seed (replicate r of A \
         against replicate r of B; a method without seeds, such as a decoder, against each), \
         then by their mean, whose interval resamples the seeds as well as the prompts. \"inconclusive\" when the interval contains 0. Each side's KL is in its name: a \
         difference between points at different KL mixes how well each method spends its KL \
         with how far it moved, so compare at similar KL to compare the methods.",
        rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn interpolation_at_a_points_own_kl_returns_it_and_midway_averages() {
        use crate::analytic::Procedure;
        use crate::curve::{Comparison, Kl, KlKind};
        let prompts: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
        let base = vec![vec![0.0, 1.0, 2.0, 3.0]; 5];
        let point = |shift: f64, kl: f64, beta: f64| {
            let policy: Vec<Vec<f64>> = base
                .iter()
                .enumerate()
                .map(|(i, r)| r.iter().map(|x| x + shift * (i as f64 + 1.0)).collect())
                .collect();
            let c = Comparison {
                policy: &policy,
                base: &base,
                procedures: &[Procedure::BestOfN { n: 2 }],
                ties: Ties::Half,
                reps: 1,
                seed: 0,
                prompts: Some(&prompts),
            };
            let kl = Kl {
                value: kl,
                stderr: None,
                kind: KlKind::K3,
            };
            CurvePoint::measure("A", Some(("beta", beta)), kl, &c).unwrap()
        };
        let (lo, hi) = (point(0.1, 1.0, 5.0), point(0.9, 3.0, 1.0));
        let at = |kl: f64| {
            let mut b = point(0.0, kl, 0.0);
            b.method = "B".into();
            interpolate_at_kl(&[&hi, &lo], &b).unwrap()
        };
        // At a point's own KL: its outcomes, unchanged.
        let own = at(1.0);
        let (p_own, p_lo) = (own.per_prompt.unwrap(), lo.per_prompt.clone().unwrap());
        assert_eq!(p_own.mean_reward, p_lo.mean_reward);
        assert_eq!(p_own.win_rates, p_lo.win_rates);
        // Midway: the average of the two, prompt by prompt.
        let mid = at(2.0).per_prompt.unwrap();
        let p_hi = hi.per_prompt.clone().unwrap();
        for (i, m) in mid.mean_reward.iter().enumerate() {
            let want = 0.5 * (p_lo.mean_reward[i] + p_hi.mean_reward[i]);
            assert!((m - want).abs() < 1e-12);
        }
        // Outside the path: an error naming the range.
        let mut far = point(0.0, 7.0, 0.0);
        far.method = "B".into();
        let e = interpolate_at_kl(&[&lo, &hi], &far)
            .unwrap_err()
            .to_string();
        assert!(e.contains('7') && e.contains('3'), "{e}");
    }

    #[test]
    fn paired_comparisons_difference_points_on_the_same_prompts() {
        use crate::analytic::Procedure;
        use crate::curve::{Comparison, Kl, KlKind};
        let prompts: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
        let base = vec![vec![0.0, 1.0, 2.0, 3.0]; 6];
        let point = |method: &str, shift: f64, prompts: &[String]| {
            let policy: Vec<Vec<f64>> = base
                .iter()
                .map(|r| r.iter().map(|x| x + shift).collect())
                .collect();
            let c = Comparison {
                policy: &policy,
                base: &base,
                procedures: &[Procedure::BestOfN { n: 2 }],
                ties: Ties::Half,
                reps: 8,
                seed: 3,
                prompts: Some(prompts),
            };
            let kl = Kl {
                value: 0.1,
                stderr: None,
                kind: KlKind::Zero,
            };
            CurvePoint::measure(method, None, kl, &c).unwrap()
        };
        let (a, b) = (point("a", 10.0, &prompts), point("b", 0.0, &prompts));
        // A point against itself: every difference is exactly 0, inconclusive.
        for row in paired_rows(&a, &a, 1).unwrap() {
            assert_eq!(row[3], "+0.000 [+0.000, +0.000]", "{row:?}");
            assert_eq!(row[4], "inconclusive");
        }
        // A beats every base sample (win rate 1), B is the base (½): +0.5 on every prompt.
        let rows = paired_rows(&a, &b, 1).unwrap();
        assert_eq!(rows.len(), 3, "mean reward, standard, best-of-2");
        assert_eq!(rows[0][3], "+10.000 [+10.000, +10.000]");
        assert_eq!(rows[1][3], "+0.500 [+0.500, +0.500]");
        assert_eq!(rows[1][4], "A better");
        // Other prompts, or a missing or ambiguous name, are errors that say so.
        let other: Vec<String> = (0..6).map(|i| format!("q{i}")).collect();
        let e = paired_rows(&a, &point("c", 0.0, &other), 1).unwrap_err();
        assert!(e.to_string().contains("different prompts"), "{e}");
        let pts = vec![a.clone(), b.clone(), b];
        assert!(
            find_point(&pts, "z")
                .unwrap_err()
                .to_string()
                .contains("names no point")
        );
        assert!(
            find_point(&pts, "b")
                .unwrap_err()
                .to_string()
                .contains("names 2 points")
        );
        assert_eq!(find_point(&pts, "a").unwrap().method, "a");
    }

    /// A point of `method` (replicate `replicate`, at KL `kl`, with β when given) whose rewards
    /// are the base's `[0, 1, 2, 3]` on each of 8 prompts shifted by `shift(i)` on prompt i.
    fn replicate_point(
        method: &str,
        shift: &dyn Fn(usize) -> f64,
        kl: f64,
        beta: Option<f64>,
        replicate: u64,
    ) -> CurvePoint {
        use crate::curve::{Comparison, Kl, KlKind};
        let prompts: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let base = vec![vec![0.0, 1.0, 2.0, 3.0]; 8];
        let policy: Vec<Vec<f64>> = base
            .iter()
            .enumerate()
            .map(|(i, r)| r.iter().map(|x| x + shift(i)).collect())
            .collect();
        let c = Comparison {
            policy: &policy,
            base: &base,
            procedures: &[],
            ties: Ties::Half,
            reps: 1,
            seed: 3,
            prompts: Some(&prompts),
        };
        let kl = Kl {
            value: kl,
            stderr: None,
            kind: KlKind::K3,
        };
        let mut p = CurvePoint::measure(method, beta.map(|b| ("beta", b)), kl, &c).unwrap();
        p.replicate = Some(replicate);
        p
    }

    #[test]
    fn replicates_are_compared_one_by_one_then_by_their_mean() {
        let point = |method: &str, shift: &dyn Fn(usize) -> f64, replicate: u64| {
            replicate_point(method, shift, replicate as f64, None, replicate)
        };
        // Replicate 1 of A is 4 above B everywhere, replicate 2 is 2 below: they disagree.
        let b1 = point("b", &|_| 0.0, 1);
        let b2 = point("b", &|_| 0.0, 2);
        let a1 = point("a", &|_| 4.0, 1);
        let a2 = point("a", &|_| -2.0, 2);
        // The mean averages prompt by prompt: +1 on every prompt, KL the mean of 1 and 2.
        let mean = average_replicates(&[&a1, &a2]).unwrap();
        let per = mean.per_prompt.as_ref().unwrap();
        assert!(
            per.mean_reward.iter().all(|r| (r - 2.5).abs() < 1e-12),
            "{per:?}"
        );
        assert!((mean.kl.value - 1.5).abs() < 1e-12);
        assert_eq!(mean.method, "a (mean of 2 replicates)");
        let pairs = vec![(a1.clone(), b1.clone()), (a2.clone(), b2.clone())];
        let rows = replicated_rows(&pairs, 1).unwrap();
        // Two measures (mean reward, standard win rate) per replicate, then for the mean.
        assert_eq!(rows.len(), 6);
        assert!(rows[0][0].contains("replicate 1") && rows[2][0].contains("replicate 2"));
        assert_eq!(rows[0][3], "+4.000 [+4.000, +4.000]");
        assert_eq!(rows[2][3], "-2.000 [-2.000, -2.000]");
        // The mean's interval resamples the seeds too: a bootstrap replicate's mean reward
        // difference is +4 (both seed draws replicate 1, probability ¼), +1 (½) or −2 (¼)
        // whatever prompts it draws, so the interval is [−2, +4] (the bootstrap over prompts
        // alone of the +1 on every prompt gave [+1, +1]).
        assert_eq!(rows[4][3], "+1.000 [-2.000, +4.000]");
        assert_eq!(rows[4][4], "inconclusive");
        // Standard win rates: B (the base) ½ on every prompt, replicate 1 of A 1, replicate 2
        // (rewards 2 below) 2/16 = 1/8: differences +½ and −3/8, mean 1/16.
        assert_eq!(rows[3][3], "-0.375 [-0.375, -0.375]");
        assert_eq!(rows[5][3], "+0.062 [-0.375, +0.500]");
        assert_eq!(rows[5][4], "inconclusive");
        // Replicates 4 and 2 above B: [+2, +4]; win rates 1 and 14/16: [+⅜, +½]. A better.
        let a2 = point("a", &|_| 2.0, 2);
        let rows =
            replicated_rows(&[(a1.clone(), b1.clone()), (a2.clone(), b2.clone())], 1).unwrap();
        assert_eq!(rows[4][3], "+3.000 [+2.000, +4.000]");
        assert_eq!(rows[5][3], "+0.438 [+0.375, +0.500]");
        assert_eq!(
            (rows[4][4].as_str(), rows[5][4].as_str()),
            ("A better", "A better")
        );
        // The mean row's difference is the two-level bootstrap of the replicates' outcomes.
        let outcomes = |i: usize| {
            let (oa, ob): (Vec<Outcomes>, Vec<Outcomes>) = [(&a1, &b1), (&a2, &b2)]
                .iter()
                .map(|(a, b)| {
                    let (_, oa, ob) = paired_outcomes(a, b).unwrap().swap_remove(i);
                    (oa, ob)
                })
                .unzip();
            replicated_difference(&oa, &ob, 1).unwrap()
        };
        for i in 0..2 {
            let d = outcomes(i);
            assert_eq!(rows[4 + i][3], difference_row("", "", &d, "")[3]);
        }
        // Selectors find every replicate; a method with two unlabelled points is ambiguous.
        let pts = vec![a1.clone(), a2, b1, b2];
        assert_eq!(find_replicates(&pts, "a").unwrap().len(), 2);
        let mut twin = a1.clone();
        twin.replicate = None;
        let mut other = a1;
        other.replicate = None;
        assert!(find_replicates(&[twin, other], "a").is_err());
    }
    #[test]
    fn replicates_at_matched_kl_use_the_two_level_interval() {
        let point = |method: &str, shift: f64, kl: f64, beta: Option<f64>, replicate: u64| {
            replicate_point(method, &|_| shift, kl, beta, replicate)
        };
        // A's path per replicate: rewards shifted by 3 and 5 (replicate 1), −3 and −1
        // (replicate 2) at KL 1 and 3; B, the base, at KL 2. At B's KL A is 4 above B in
        // replicate 1 and 2 below in replicate 2: the mean row's interval is [−2, +4].
        let points = vec![
            point("a", 3.0, 1.0, Some(2.0), 1),
            point("a", 5.0, 3.0, Some(1.0), 1),
            point("a", -3.0, 1.0, Some(2.0), 2),
            point("a", -1.0, 3.0, Some(1.0), 2),
            point("b", 0.0, 2.0, None, 1),
            point("b", 0.0, 2.0, None, 2),
        ];
        let mut report = Report::new("r");
        add_paired_at_kl(&mut report, &points, &[("a".into(), "b".into())], 1).unwrap();
        let Some(Block::Table(_, rows)) = report.blocks.last() else {
            panic!("{:?}", report.blocks)
        };
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0][3], "+4.000 [+4.000, +4.000]");
        assert_eq!(rows[2][3], "-2.000 [-2.000, -2.000]");
        assert!(rows[4][0].contains("mean of 2 replicates"), "{:?}", rows[4]);
        assert_eq!(rows[4][3], "+1.000 [-2.000, +4.000]");
        assert_eq!(rows[4][4], "inconclusive");
    }

    #[test]
    fn a_method_without_replicates_meets_every_replicate_of_the_other() {
        let unreplicated = |mut p: CurvePoint| {
            p.replicate = None;
            p
        };
        // A decoder (no replicates) 1 above the base on every prompt; B trained twice: 4 above
        // and 2 below. A − B is −3 in replicate 1 and +3 in replicate 2: mean 0, and the
        // two-level interval [−3, +3] (the seed draw decides, whatever the prompts).
        let a = unreplicated(replicate_point("a", &|_| 1.0, 2.0, None, 0));
        let b1 = replicate_point("b", &|_| 4.0, 2.0, None, 1);
        let b2 = replicate_point("b", &|_| -2.0, 2.0, None, 2);
        let points = vec![a.clone(), b1.clone(), b2.clone()];
        // The rows of one comparison of `a` with `b` (paired, or at matched KL), or its error.
        let compare = |at_kl: bool, points: &[CurvePoint], a: &str, b: &str| {
            let mut report = Report::new("r");
            let pair = [(a.to_string(), b.to_string())];
            if at_kl {
                add_paired_at_kl(&mut report, points, &pair, 1)?;
            } else {
                add_paired(&mut report, points, &pair, 1)?;
            }
            Ok::<_, EvalError>(match report.blocks.last() {
                Some(Block::Table(_, rows)) => rows.clone(),
                other => panic!("{other:?}"),
            })
        };
        let rows = compare(false, &points, "a", "b").unwrap();
        assert_eq!(rows.len(), 6, "{rows:?}");
        assert_eq!(rows[0][3], "-3.000 [-3.000, -3.000]");
        assert_eq!(rows[2][3], "+3.000 [+3.000, +3.000]");
        assert_eq!(rows[4][3], "+0.000 [-3.000, +3.000]");
        // The shared side is named as itself, not as a mean of replicates; B as its mean.
        assert!(
            rows[4][0].starts_with("a (KL 2.00) − b (mean of 2 replicates"),
            "{:?}",
            rows[4]
        );
        // The other way round: B − A, the signs flip.
        assert_eq!(
            compare(false, &points, "b", "a").unwrap()[0][3],
            "+3.000 [+3.000, +3.000]"
        );
        // At matched KL: A's path (1 above the base at KL 1, 3 above at KL 3) interpolated at
        // each replicate's KL of 2 is 2 above the base: −2 and +4 against B, mean +1.
        let path = vec![
            unreplicated(replicate_point("a", &|_| 1.0, 1.0, Some(2.0), 0)),
            unreplicated(replicate_point("a", &|_| 3.0, 3.0, Some(1.0), 0)),
            b1,
            b2,
        ];
        let rows = compare(true, &path, "a", "b").unwrap();
        assert_eq!(rows.len(), 6, "{rows:?}");
        assert_eq!(rows[0][3], "-2.000 [-2.000, -2.000]");
        assert_eq!(rows[2][3], "+4.000 [+4.000, +4.000]");
        assert_eq!(rows[4][3], "+1.000 [-2.000, +4.000]");
        // Every replicate of B is at KL 2, so the shared path is one point, named as itself.
        assert!(rows[4][0].starts_with("a interpolated"), "{:?}", rows[4]);
        let a_side = rows[4][0].split(" − ").next().unwrap();
        assert!(!a_side.contains("mean"), "{:?}", rows[4]);
        // B's replicates at different KLs: the shared path's mean is a mean at those KLs.
        let mut apart = path.clone();
        apart[3].kl.value = 2.5;
        let rows = compare(true, &apart, "a", "b").unwrap();
        assert!(
            rows[4][0]
                .split(" − ")
                .next()
                .is_some_and(|a| a.ends_with("(mean at 2 replicates' KLs) (KL 2.25)")),
            "{:?}",
            rows[4]
        );
        // Replicated paths of A against one B without replicates: each seed's path at B's KL.
        let swapped = vec![
            replicate_point("a", &|_| 1.0, 1.0, Some(2.0), 1),
            replicate_point("a", &|_| 3.0, 3.0, Some(1.0), 1),
            replicate_point("a", &|_| -3.0, 1.0, Some(2.0), 2),
            replicate_point("a", &|_| -1.0, 3.0, Some(1.0), 2),
            unreplicated(replicate_point("b", &|_| 0.0, 2.0, None, 0)),
        ];
        let rows = compare(true, &swapped, "a", "b").unwrap();
        assert_eq!(rows.len(), 6, "{rows:?}");
        assert_eq!(rows[0][3], "+2.000 [+2.000, +2.000]");
        assert_eq!(rows[2][3], "-2.000 [-2.000, -2.000]");
        assert_eq!(rows[4][3], "+0.000 [-2.000, +2.000]");
        assert!(
            rows[4][0].contains("(mean of 2 replicates"),
            "{:?}",
            rows[4]
        );
        // A path with and without replicates, or a seed of B that A lacks: an error, never a
        // silent mix of the two pairings.
        let mut mixed = swapped.clone();
        mixed.push(unreplicated(replicate_point(
            "a",
            &|_| 0.0,
            1.5,
            Some(1.5),
            0,
        )));
        let e = compare(true, &mixed, "a", "b");
        assert!(format!("{}", e.unwrap_err()).contains("with and without replicates"));
        // A point beyond the path's KLs: the error names the comparison and that point.
        let mut far = swapped[..4].to_vec();
        far.push(unreplicated(replicate_point("b", &|_| 0.0, 3.5, None, 0)));
        let e = compare(true, &far, "a", "b");
        let message = format!("{}", e.unwrap_err());
        assert!(
            message.contains("`a`'s KL path (replicate 1) spans [1, 3]")
                && message.contains("cover the KL 3.5 of b (KL 3.50)"),
            "{message}"
        );
        let mut missing = swapped[..4].to_vec();
        missing.push(replicate_point("b", &|_| 0.0, 2.0, None, 3));
        let e = compare(true, &missing, "a", "b");
        assert!(format!("{}", e.unwrap_err()).contains("no replicate 3"));
        // Two seeds of A against one B with no replicates: still one pair per seed.
        let two_a = vec![
            replicate_point("a", &|_| 4.0, 2.0, None, 1),
            replicate_point("a", &|_| -2.0, 2.0, None, 2),
            unreplicated(replicate_point("b", &|_| 1.0, 2.0, None, 0)),
        ];
        assert_eq!(
            compare(false, &two_a, "a", "b").unwrap()[4][3],
            "+0.000 [-3.000, +3.000]"
        );
    }

    use super::*;
    use crate::plot::Series;

    fn report() -> Report {
        let mut r = Report::new("Run <1>");
        r.heading("Numbers")
            .paragraph("Reward `sentiment` & more")
            .table(&["a", "b"], vec![vec!["x|y".into(), "1.0".into()]]);
        let mut p = LinePlot::new("curve", "x", "y");
        p.series
            .push(Series::line("s", vec![(0.0, 0.5), (1.0, 0.7)]));
        r.figure(p, "curve");
        r
    }

    #[test]
    fn markdown_and_html_are_written_with_figures() {
        let dir = tempfile::tempdir().unwrap();
        let (md, html) = report().write(dir.path()).unwrap();
        let md = std::fs::read_to_string(md).unwrap();
        assert!(md.starts_with("# Run <1>\n"));
        assert!(md.contains("| x\\|y | 1.0 |"));
        assert!(md.contains("![curve](curve.png)"));
        assert!(dir.path().join("curve.png").exists());
        let html = std::fs::read_to_string(html).unwrap();
        assert!(html.contains("<h1>Run &lt;1&gt;</h1>"));
        assert!(html.contains("<code>sentiment</code> &amp; more"));
        // Self-contained: the figure is inline, nothing is fetched.
        assert!(html.contains("<svg") && !html.contains("src="));
    }
}
