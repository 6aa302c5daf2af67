//! Line plots of evaluation curves (win rate or reward against KL), drawn with plotters into
//! SVG and PNG.
//!
//! Text is laid out with DejaVu Sans, compiled into the crate (`assets/DejaVuSans.ttf`, Bitstream
//! Vera licence beside it), so plots look the same on every machine and need no system font
//! library.
//!
//! Invariants: the same [`LinePlot`] gives the same SVG bytes; files are written to a temporary
//! name and renamed; an empty plot or a non-finite coordinate is an error naming the series,
//! never a panic inside the drawing library.

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
}

impl Series {
    /// A series drawn as points joined by a line.
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            errors: None,
            style: SeriesStyle::LinePoints,
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

/// Size of every plot in pixels.
const SIZE: (u32, u32) = (720, 480);

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
        let mut chart = ChartBuilder::on(root)
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
        let mut colour = COLOURS.iter().cycle();
        // References in greys from dark to light, so that several stay apart.
        let mut grey = [60u8, 150, 200].into_iter().cycle();
        for s in &self.series {
            let (c, width) = match s.style {
                SeriesStyle::Reference => {
                    let g = grey.next().expect("cycled");
                    (RGBColor(g, g, g), 2)
                }
                _ => (*colour.next().expect("cycled"), 2),
            };
            let pts = s.points.clone();
            let anno = match s.style {
                SeriesStyle::Points => chart.draw_series(
                    pts.iter()
                        .map(|&p| Circle::new(p, 4, c.filled()))
                        .collect::<Vec<_>>(),
                ),
                _ => chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(width))),
            }
            .map_err(draw_error)?;
            anno.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(width))
            });
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
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)
    }

    /// The plot as an SVG document.
    pub fn to_svg(&self) -> Result<String, EvalError> {
        self.check()?;
        register_font();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
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
            let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
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
