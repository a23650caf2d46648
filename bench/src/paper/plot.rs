//! The figures of `nham-bench paper`, drawn with `plotters`: one PNG and
//! one SVG per figure, our series (solid, with 95 % confidence bars) beside
//! the paper's (dashed) on the same axes.
//!
//! PNG text is drawn with `ab_glyph` from DejaVu Sans, read at run time
//! (`fonts-dejavu-core`, installed by `scripts/setup.sh`; `NHAM_FONT`
//! names another TrueType file): no fontconfig, no font shipped here.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// Where a figure's text font is looked for.
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Errors of drawing a figure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlotError {
    /// No TrueType font to draw the PNG's text with.
    #[error("no font for the figures' text: install fonts-dejavu-core (scripts/setup.sh does) or set NHAM_FONT to a .ttf file ({0})")]
    Font(String),
    /// The drawing itself.
    #[error("drawing {path}: {reason}")]
    Draw {
        /// The file.
        path: String,
        /// What plotters said.
        reason: String,
    },
}

/// Registers the font once per process.
fn font() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<String> = std::env::var("NHAM_FONT")
            .ok()
            .into_iter()
            .chain(FONTS.iter().map(|s| s.to_string()))
            .collect();
        let (path, bytes) = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b)))
            .ok_or_else(|| format!("tried {}", candidates.join(", ")))?;
        // plotters keeps registered fonts for the process's life.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is no TrueType font"))
    })
    .clone()
    .map_err(PlotError::Font)
}

/// One series of a figure.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend.
    pub(crate) name: String,
    /// Points (x, y), with the half-width of y's 95 % interval (0: none).
    pub(crate) points: Vec<(f64, f64, f64)>,
    /// The paper's (dashed, hollow markers) or ours (solid).
    pub(crate) paper: bool,
    /// Colour index (a mechanism keeps its colour across figures).
    pub(crate) colour: usize,
}

/// A figure.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    /// Title (the host, commit and date are added below it).
    pub(crate) title: String,
    /// The second title line: host, commit, date.
    pub(crate) subtitle: String,
    /// Axis labels.
    pub(crate) x_label: String,
    /// Axis labels.
    pub(crate) y_label: String,
    /// A logarithmic y axis.
    pub(crate) log_y: bool,
    /// Series.
    pub(crate) series: Vec<Series>,
    /// Vertical markers (x values: failures in a time series).
    pub(crate) markers: Vec<f64>,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x55, 0x55, 0x55),
];

impl Figure {
    /// Writes `<stem>.png` and `<stem>.svg`.
    pub(crate) fn write(&self, stem: &Path) -> Result<(), PlotError> {
        font()?;
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        let err = |p: &Path| {
            let path = p.display().to_string();
            move |e: String| PlotError::Draw {
                path: path.clone(),
                reason: e,
            }
        };
        {
            let root = BitMapBackend::new(&png, (1100, 700)).into_drawing_area();
            self.draw(&root).map_err(err(&png))?;
            root.present()
                .map_err(|e| e.to_string())
                .map_err(err(&png))?;
        }
        {
            let root = SVGBackend::new(&svg, (1100, 700)).into_drawing_area();
            self.draw(&root).map_err(err(&svg))?;
            root.present()
                .map_err(|e| e.to_string())
                .map_err(err(&svg))?;
        }
        Ok(())
    }

    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y, e) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            let lo = if self.log_y { y } else { y - e };
            if !self.log_y || y > 0.0 {
                y0 = y0.min(lo);
            }
            y1 = y1.max(y + e);
        }
        for &m in &self.markers {
            x0 = x0.min(m);
            x1 = x1.max(m);
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x0 == x1 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        if y0 > y1 {
            (y0, y1) = (0.0, 1.0);
        }
        if self.log_y {
            // Whole decades around the data.
            let lo = 10f64.powf(y0.max(1e-9).log10().floor());
            let hi = 10f64.powf(y1.max(lo * 10.0).log10().ceil());
            ((x0, x1), (lo, hi))
        } else {
            let pad = (y1 - y0.min(0.0)).max(1e-9) * 0.08;
            ((x0, x1), (y0.min(0.0), y1 + pad))
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let (top, rest) = root.split_vertically(60);
        top.draw(&Text::new(
            self.title.clone(),
            (20, 8),
            ("sans-serif", 22).into_font(),
        ))
        .map_err(e)?;
        top.draw(&Text::new(
            self.subtitle.clone(),
            (20, 36),
            ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(e)?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let mut b = ChartBuilder::on(&rest);
        b.margin(16).x_label_area_size(44).y_label_area_size(80);
        if self.log_y {
            let mut chart = b
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label.as_str())
                .y_desc(self.y_label.as_str())
                .y_label_formatter(&|v| format!("{v:e}"))
                .draw()
                .map_err(e)?;
            self.series_on(&mut chart, y0, y1, SeriesLabelPosition::UpperRight)
                .map_err(e)?;
        } else {
            let mut chart = b.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label.as_str())
                .y_desc(self.y_label.as_str())
                .draw()
                .map_err(e)?;
            self.series_on(&mut chart, y0, y1, SeriesLabelPosition::LowerRight)
                .map_err(e)?;
        }
        Ok(())
    }

    fn series_on<'a, DB, X, Y>(
        &self,
        chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
        y0: f64,
        y1: f64,
        legend: SeriesLabelPosition,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
    where
        DB: DrawingBackend + 'a,
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        for &m in &self.markers {
            chart.draw_series(LineSeries::new(
                [(m, y0), (m, y1)],
                RGBColor(180, 180, 180).stroke_width(1),
            ))?;
        }
        for s in &self.series {
            let colour = COLOURS[s.colour % COLOURS.len()];
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|&&(_, y, _)| !self.log_y || y > 0.0)
                .map(|&(x, y, _)| (x, y))
                .collect();
            if s.paper {
                chart
                    .draw_series(DashedLineSeries::new(
                        pts.clone(),
                        8,
                        5,
                        colour.stroke_width(2),
                    ))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart.draw_series(
                    pts.iter()
                        .map(|&p| Circle::new(p, 4, colour.stroke_width(1))),
                )?;
            } else {
                let many = pts.len() > 60;
                chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3))
                    });
                if !many {
                    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
                    chart.draw_series(
                        s.points
                            .iter()
                            .filter(|&&(_, y, e)| e > 0.0 && (!self.log_y || y > 0.0))
                            .map(|&(x, y, e)| {
                                // (On a log axis an interval reaching zero
                                // or below ends at the axis, not far under
                                // it.)
                                ErrorBar::new_vertical(
                                    x,
                                    if self.log_y { (y - e).max(y0) } else { y - e },
                                    y,
                                    y + e,
                                    colour.stroke_width(1),
                                    8,
                                )
                            }),
                    )?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(legend)
            .draw()
    }
}
