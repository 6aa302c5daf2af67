//! Line plots of evaluation curves (win rate or reward against KL), drawn with plotters into
//! SVG and PNG.
//!
//! Text is laid out with DejaVu Sans, compiled into the crate (`assets/DejaVuSans.ttf`, Bitstream
//! Vera licence beside it), so plots look the same on every machine and need no system font
//! library.
//!
//! Invariants: the same [`LinePlot`] gives the same SVG bytes; files are written to a temporary
//! name and renamed; an empty plot or a non-finite coordinate is an error naming the series,
//! never a panic inside the drawing library; the legend is drawn in a panel beside the plotting
//! area, never over it, so it cannot hide a point; series of one group (the training replicates
//! of one method) share a colour and one legend entry.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::EvalError;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bytes are a valid TrueType file compiled in; a failure would show in every test.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            tracing::error!("the bundled font could not be registered");
        }
    });
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesStyle {
    /// Points joined by a line, in series order.
    LinePoints,
    /// Markers only.
    Points,
    /// A thin grey line: a theoretical reference such as the best-of-N curve.
    Reference,
}

/// One named series of `(x, y)` points, optionally with vertical error bars `(low, high)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// The points, drawn in this order.
    pub points: Vec<(f64, f64)>,
    /// Error bar ends per point (same length as `points`), if any.
    pub errors: Option<Vec<(f64, f64)>>,
    /// Drawing style.
    pub style: SeriesStyle,
    /// Series with the same group (say, the training replicates of one method) share a colour
    /// and one legend entry, `GROUP (N replicates)`; `None` for a series of its own.
    #[serde(default)]
    pub group: Option<String>,
}

impl Series {
    /// A series drawn as points joined by a line.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            errors: None,
            style: SeriesStyle::LinePoints,
            group: None,
        }
    }

    /// A theoretical reference curve.
    pub fn reference(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            style: SeriesStyle::Reference,
            ..Self::line(name, points)
        }
    }
}

/// A plot of several series on shared axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
}

/// Size of the plotting area (axes included) in pixels; the legend panel is added to its right.
const SIZE: (u32, u32) = (720, 480);
/// Legend panel: pixels per entry, per character of a label (DejaVu Sans at 13 px, generous),
/// and around the entries.
const LEGEND_ROW: u32 = 20;
const LEGEND_CHAR: u32 = 7;
const LEGEND_MARGIN: u32 = 16;
/// Width of the line sample before a legend label, and the gap after it.
const LEGEND_SAMPLE: i32 = 22;

/// Colours of the data series (Tableau 10), cycled.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

fn draw_error(e: impl std::fmt::Debug) -> EvalError {
    EvalError::Invalid {
        field: "plot",
        message: format!("drawing failed: {e:?}"),
    }
}

impl LinePlot {
    /// An empty plot with a title and axis labels.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            y_range: None,
        }
    }

    fn check(&self) -> Result<(), EvalError> {
        if self.series.iter().all(|s| s.points.is_empty()) {
            return Err(EvalError::Invalid {
                field: "plot",
                message: format!("`{}` has no points to draw", self.title),
            });
        }
        for s in &self.series {
            let bad = s
                .points
                .iter()
                .find(|(x, y)| !(x.is_finite() && y.is_finite()));
            if let Some(p) = bad {
                return Err(EvalError::Invalid {
                    field: "plot",
                    message: format!("series `{}` has a non-finite point {p:?}", s.name),
                });
            }
            if let Some(e) = &s.errors
                && e.len() != s.points.len()
            {
                return Err(EvalError::Invalid {
                    field: "plot",
                    message: format!(
                        "series `{}` has {} error bars for {} points",
                        s.name,
                        e.len(),
                        s.points.len()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The axis ranges: the data (with error bars) plus 5% margins; x starts at 0 when the
    /// data are non-negative (KL is).
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter().copied());
        let bars = self
            .series
            .iter()
            .filter_map(|s| s.errors.as_ref())
            .flatten()
            .flat_map(|&(lo, hi)| [lo, hi])
            .filter(|v| v.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        for y in bars {
            (y0, y1) = (y0.min(y), y1.max(y));
        }
        let pad = |a: f64, b: f64| {
            let w = if b > a { b - a } else { a.abs().max(1.0) };
            (a - 0.05 * w, b + 0.05 * w)
        };
        let (mut xa, xb) = pad(x0, x1);
        if x0 >= 0.0 {
            xa = 0.0;
        }
        ((xa, xb), self.y_range.unwrap_or_else(|| pad(y0, y1)))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), EvalError> {
        root.fill(&WHITE).map_err(draw_error)?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let (area, legend) = root.split_horizontally(SIZE.0);
        let mut chart = ChartBuilder::on(&area)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(("sans-serif", 13))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw_error)?;
        let styles = self.styles();
        for (s, &(c, width)) in self.series.iter().zip(&styles) {
            let pts = s.points.clone();
            match s.style {
                SeriesStyle::Points => chart.draw_series(
                    pts.iter()
                        .map(|&p| Circle::new(p, 4, c.filled()))
                        .collect::<Vec<_>>(),
                ),
                _ => chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(width))),
            }
            .map_err(draw_error)?;
            if s.style == SeriesStyle::LinePoints {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(draw_error)?;
            }
            if let Some(errors) = &s.errors {
                chart
                    .draw_series(pts.iter().zip(errors).map(|(&(x, _), &(lo, hi))| {
                        PathElement::new(vec![(x, lo), (x, hi)], c.stroke_width(1))
                    }))
                    .map_err(draw_error)?;
            }
        }
        for (i, (label, c, width)) in self.legend(&styles).into_iter().enumerate() {
            let y = (LEGEND_MARGIN + LEGEND_ROW * i as u32 + LEGEND_ROW / 2) as i32;
            let x = LEGEND_MARGIN as i32;
            legend
                .draw(&PathElement::new(
                    vec![(x, y), (x + LEGEND_SAMPLE - 4, y)],
                    c.stroke_width(width),
                ))
                .map_err(draw_error)?;
            let font = ("sans-serif", 13).into_font().color(&BLACK);
            let style = font.pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            ));
            legend
                .draw(&Text::new(label, (x + LEGEND_SAMPLE, y), style))
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)
    }

    /// Each series' colour and line width: references in greys from dark to light (so that
    /// several stay apart), data series in the [`COLOURS`] cycle, one colour per group.
    fn styles(&self) -> Vec<(RGBColor, u32)> {
        let mut colour = COLOURS.iter().cycle();
        let mut grey = [60u8, 150, 200].into_iter().cycle();
        let mut groups: Vec<(&str, RGBColor)> = Vec::new();
        self.series
            .iter()
            .map(|s| match (s.style, &s.group) {
                (SeriesStyle::Reference, _) => {
                    let g = grey.next().expect("cycled");
                    (RGBColor(g, g, g), 2)
                }
                (_, Some(group)) => match groups.iter().find(|(g, _)| g == group) {
                    Some(&(_, c)) => (c, 2),
                    None => {
                        let c = *colour.next().expect("cycled");
                        groups.push((group, c));
                        (c, 2)
                    }
                },
                (_, None) => (*colour.next().expect("cycled"), 2),
            })
            .collect()
    }

    /// The legend's entries in series order: a series of its own by its name, a group once, at
    /// its first series, as `GROUP (N replicates)`.
    fn legend(&self, styles: &[(RGBColor, u32)]) -> Vec<(String, RGBColor, u32)> {
        let mut seen: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for (s, &(c, width)) in self.series.iter().zip(styles) {
            match &s.group {
                None => out.push((s.name.clone(), c, width)),
                Some(g) if !seen.contains(&g.as_str()) => {
                    seen.push(g);
                    let n = self
                        .series
                        .iter()
                        .filter(|t| t.group.as_ref() == Some(g))
                        .count();
                    out.push((format!("{g} ({n} replicates)"), c, width));
                }
                Some(_) => {}
            }
        }
        out
    }

    /// The image size: the plotting area, and beside it a legend panel wide enough for the
    /// longest label; taller than the plotting area when the legend needs it.
    fn size(&self) -> (u32, u32) {
        let entries = self.legend(&self.styles());
        let longest = entries
            .iter()
            .map(|(l, _, _)| l.chars().count() as u32)
            .max()
            .unwrap_or(0);
        let width = 2 * LEGEND_MARGIN + LEGEND_SAMPLE as u32 + LEGEND_CHAR * longest;
        let height = 2 * LEGEND_MARGIN + LEGEND_ROW * entries.len() as u32;
        (SIZE.0 + width, SIZE.1.max(height))
    }

    /// The plot as an SVG document.
    pub fn to_svg(&self) -> Result<String, EvalError> {
        self.check()?;
        register_font();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(svg)
    }

    /// Writes `<stem>.svg` and `<stem>.png` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), EvalError> {
        let svg = self.to_svg()?;
        let svg_path = dir.join(format!("{stem}.svg"));
        infalign_core::io::write_atomic(&svg_path, svg.as_bytes())?;
        let png_path = dir.join(format!("{stem}.png"));
        // The bitmap backend picks the encoder from the extension: the temporary name keeps it.
        let tmp = dir.join(format!(".{stem}.tmp.png"));
        {
            let root = BitMapBackend::new(&tmp, self.size()).into_drawing_area();
            self.draw(&root)?;
        }
        std::fs::rename(&tmp, &png_path).map_err(|e| infalign_core::CoreError::io(&png_path, e))?;
        Ok((svg_path, png_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot() -> LinePlot {
        let mut p = LinePlot::new("Win rate against KL", "KL", "win rate");
        p.series.push(Series::reference(
            "best-of-N (theory)",
            (1..=8u32)
                .map(|n| {
                    let n = f64::from(n);
                    (n.ln() - (n - 1.0) / n, n / (n + 1.0))
                })
                .collect(),
        ));
        let mut s = Series::line("tokenwise CD", vec![(0.1, 0.55), (0.5, 0.7), (1.2, 0.8)]);
        s.errors = Some(vec![(0.5, 0.6), (0.65, 0.75), (0.75, 0.85)]);
        p.series.push(s);
        p
    }

    #[test]
    fn svg_is_deterministic_and_carries_the_labels() {
        let a = plot().to_svg().unwrap();
        assert_eq!(a, plot().to_svg().unwrap());
        assert!(a.starts_with("<svg"));
        for text in [
            "Win rate against KL",
            "tokenwise CD",
            "best-of-N (theory)",
            "KL",
        ] {
            assert!(a.contains(text), "missing {text}");
        }
    }

    /// The `x` attribute of the SVG `<text>` element whose content is `label`.
    fn text_x(svg: &str, label: &str) -> f64 {
        let at = svg.find(label).unwrap_or_else(|| panic!("no text {label}"));
        let tag = &svg[svg[..at].rfind("<text").expect("a text element")..at];
        let x = tag.split("x=\"").nth(1).expect("an x attribute");
        x[..x.find('"').expect("closing quote")]
            .parse()
            .expect("a number")
    }

    #[test]
    fn the_legend_stands_beside_the_plot_and_groups_replicates() {
        let mut p = plot();
        for r in 0..3 {
            let mut s = Series::line(
                format!("CTRL, replicate {r}"),
                vec![(0.3 * f64::from(r), 0.6), (1.0, 0.7)],
            );
            s.group = Some("CTRL".into());
            p.series.push(s);
        }
        let svg = p.to_svg().unwrap();
        // Every legend label starts right of the plotting area, where no point can be.
        for label in ["best-of-N (theory)", "tokenwise CD", "CTRL (3 replicates)"] {
            let x = text_x(&svg, label);
            assert!(x >= f64::from(SIZE.0), "{label} at x = {x}");
        }
        // One entry for the group, none per replicate; the replicates share one colour that
        // no other data series has.
        assert!(!svg.contains("CTRL, replicate 1"));
        assert_eq!(p.legend(&p.styles()).len(), 3);
        let styles = p.styles();
        assert!(styles[2..].iter().all(|s| s.0 == styles[2].0));
        assert_ne!(styles[1].0, styles[2].0);
        // A legend taller than the plotting area makes the image taller, not the rows overlap.
        let mut tall = plot();
        for i in 0..40 {
            tall.series
                .push(Series::line(format!("s{i}"), vec![(0.0, 0.5), (1.0, 0.6)]));
        }
        let (w, h) = tall.size();
        assert!(
            w > SIZE.0 && h >= 2 * LEGEND_MARGIN + 42 * LEGEND_ROW,
            "{w} x {h}"
        );
    }

    #[test]
    fn png_and_svg_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let (svg, png) = plot().write(dir.path(), "curve").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // A drawn plot is not a blank page: text and lines make it compress worse than white.
        assert!(bytes.len() > 5_000, "{} bytes", bytes.len());
        assert!(std::fs::read_to_string(svg).unwrap().contains("</svg>"));
        assert!(!dir.path().join(".curve.tmp.png").exists());
    }

    #[test]
    fn bad_plots_are_errors() {
        let empty = LinePlot::new("t", "x", "y");
        assert!(
            empty
                .to_svg()
                .unwrap_err()
                .to_string()
                .contains("no points")
        );
        let mut p = plot();
        p.series[1].points[0].1 = f64::NAN;
        assert!(p.to_svg().unwrap_err().to_string().contains("tokenwise CD"));
        let mut p = plot();
        p.series[1].errors = Some(vec![(0.0, 1.0)]);
        assert!(p.to_svg().unwrap_err().to_string().contains("error bars"));
    }
}
