//! The report's figures, drawn with plotters into PNG and SVG.
//!
//! Each figure is a plain struct of the numbers it shows and a `draw` that works on any
//! plotters backend, so one description gives both files. Text is set in DejaVu Sans, embedded
//! in the binary: the PNGs render the same on a machine without any system font.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::score::{RunPoint, Score, pareto_front};
use crate::config::optim::compact_number;
use crate::run::write_atomic;

/// DejaVu Sans (Bitstream Vera licence, see assets/DejaVuSans-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Colours for series, in order: distinct, and legible on white.
const SERIES_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// The colour of series `i`.
pub fn series_color(i: usize) -> RGBColor {
    SERIES_COLORS[i % SERIES_COLORS.len()]
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure: its pixel size and how to draw it on any backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws onto a white `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        [FontStyle::Normal, FontStyle::Bold]
            .into_iter()
            .all(|style| plotters::style::register_font(FAMILY, style, FONT).is_ok())
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded font could not be loaded"))
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Writes `dir/<stem>.png` and `dir/<stem>.svg` (each atomically).
pub fn save(figure: &impl Figure, dir: &Path, stem: &str) -> Result<()> {
    register_font()?;
    let size = figure.size();
    let png = dir.join(format!("{stem}.png"));
    // The bitmap backend picks the encoder from the extension: the temporary name keeps `.png`.
    let tmp = dir.join(format!("{stem}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        figure.draw(&root).map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    std::fs::rename(&tmp, &png).with_context(|| format!("writing {}", png.display()))?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        figure.draw(&root).map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    write_atomic(&dir.join(format!("{stem}.svg")), svg.as_bytes())
}

/// Text in the embedded font. Even sizes only: plotters places each glyph at
/// `(size / 2 + top) as i32`, and for odd sizes that truncation puts a period half a line high.
fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
}

/// The series legend every chart uses: a framed, mostly opaque box at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(font(font_size))
        .draw()
}

/// `[lo - pad_lo, hi + pad_hi]`, widened when the values are all equal.
fn padded_range(values: impl Iterator<Item = f64>, pad_lo: f64, pad_hi: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = (lo - pad_lo, hi + pad_hi);
    if hi - lo < 1e-9 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Plot 1: the score against sparsity, one point per run, the Pareto front drawn.
pub struct ScoreVsSparsity {
    /// What the runs are scored by.
    pub score: Score,
    /// The runs.
    pub points: Vec<RunPoint>,
    /// AdamW's score, drawn as a dashed line at the tolerance's bound.
    pub reference: Option<f64>,
    /// The threshold that counts as zero, for the axis label.
    pub threshold: f64,
}

impl Figure for ScoreVsSparsity {
    fn size(&self) -> (u32, u32) {
        (1000, 650)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let score = self.score;
        let values = self
            .points
            .iter()
            .map(|p| p.score)
            .chain(self.reference.map(|r| score.bound(r)));
        // one tolerance of room on the good side, two on the bad
        let (good_pad, bad_pad) = (score.tolerance, 2.0 * score.tolerance);
        let (lo, hi) = if score.higher_is_better {
            padded_range(values, bad_pad, good_pad)
        } else {
            padded_range(values, good_pad, bad_pad)
        };
        // a collapsed run (a naive Lp at chance) would squeeze every other point into a line:
        // the axis stops 12 tolerances (6 pp, 0.6 nats) on the bad side of AdamW and such
        // runs sit on its edge as triangles
        let (lo, hi) = match self.reference {
            Some(r) if score.higher_is_better => (lo.max(r - 12.0 * score.tolerance), hi),
            Some(r) => (lo, hi.min(r + 12.0 * score.tolerance)),
            None => (lo, hi),
        };
        let off_axis = |v: f64| v < lo || v > hi;
        let edge = if score.higher_is_better {
            lo + 0.02 * (hi - lo)
        } else {
            hi - 0.02 * (hi - lo)
        };
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{} against sparsity", score.title), font(26))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..100f64, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc(format!(
                "sparsity: decayed weights with |w| < {:.0e} (%)",
                self.threshold
            ))
            .y_desc(score.axis)
            .label_style(font(16))
            .axis_desc_style(font(18))
            .draw()?;
        if let Some(r) = self.reference {
            let grey = RGBColor(120, 120, 120);
            let bound = score.bound(r);
            let sign = if score.higher_is_better { '-' } else { '+' };
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, bound), (100.0, bound)],
                    8,
                    5,
                    grey.stroke_width(2),
                ))?
                .label(format!(
                    "AdamW {} {sign} {}",
                    score.title.to_lowercase(),
                    score.tolerance_words
                ))
                .legend(legend_line(grey));
        }
        chart
            .draw_series(LineSeries::new(
                pareto_front(&self.points, score)
                    .into_iter()
                    .filter(|p| !off_axis(p.1)),
                BLACK.stroke_width(2),
            ))?
            .label("Pareto front")
            .legend(legend_line(BLACK));
        let mut groups: Vec<&str> = Vec::new();
        for p in &self.points {
            if !groups.contains(&p.group.as_str()) {
                groups.push(&p.group);
            }
        }
        for (i, group) in groups.iter().enumerate() {
            let color = series_color(i);
            let members: Vec<&RunPoint> =
                self.points.iter().filter(|p| p.group == *group).collect();
            let outside = members.iter().filter(|p| off_axis(p.score)).count();
            let label = if outside > 0 {
                format!("{group} ({outside} off the axis, triangle)")
            } else {
                group.to_string()
            };
            chart
                .draw_series(
                    members
                        .iter()
                        .filter(|p| !off_axis(p.score))
                        .map(|p| Circle::new((p.sparsity, p.score), 7, color.filled())),
                )?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 7, color.filled()));
            chart.draw_series(
                members
                    .iter()
                    .filter(|p| off_axis(p.score))
                    .map(|p| TriangleMarker::new((p.sparsity, edge), 9, color.filled())),
            )?;
        }
        let position = if score.higher_is_better {
            SeriesLabelPosition::LowerLeft
        } else {
            SeriesLabelPosition::UpperLeft
        };
        draw_legend(&mut chart, position, 16)
    }
}

/// Plot 2: one value per (p, lambda) cell, the phase diagram.
pub struct Heatmap {
    /// The title.
    pub title: String,
    /// p values (rows, bottom to top).
    pub ps: Vec<f64>,
    /// lambda values (columns, left to right).
    pub lambdas: Vec<f64>,
    /// `(lambda index, p index, value)`; missing cells stay blank.
    pub cells: Vec<(usize, usize, f64)>,
    /// The unit appended to each cell's number.
    pub unit: &'static str,
    /// Decimals shown in each cell.
    pub decimals: usize,
}

impl Figure for Heatmap {
    fn size(&self) -> (u32, u32) {
        (
            260 + 150 * self.lambdas.len() as u32,
            180 + 90 * self.ps.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (nl, np) = (self.lambdas.len(), self.ps.len());
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(24))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(70)
            // plotters' integer ranges include their end: 0..n-1 holds n segments
            .build_cartesian_2d(
                (0..nl.saturating_sub(1)).into_segmented(),
                (0..np.saturating_sub(1)).into_segmented(),
            )?;
        let lambdas = self.lambdas.clone();
        let ps = self.ps.clone();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("lambda")
            .y_desc("p")
            .x_labels(nl)
            .y_labels(np)
            .x_label_formatter(&move |v| {
                match v {
                    SegmentValue::CenterOf(i) => lambdas.get(*i).map(|l| format!("{l:e}")),
                    _ => None,
                }
                .unwrap_or_default()
            })
            .y_label_formatter(&move |v| {
                match v {
                    SegmentValue::CenterOf(j) => ps.get(*j).map(|p| format!("{p}")),
                    _ => None,
                }
                .unwrap_or_default()
            })
            .label_style(font(16))
            .axis_desc_style(font(18))
            .draw()?;
        let (lo, hi) = padded_range(self.cells.iter().map(|c| c.2), 0.0, 0.0);
        for &(i, j, v) in &self.cells {
            let shade = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            let color = ViridisRGB::get_color_normalized(shade as f32, 0.0, 1.0);
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), SegmentValue::Exact(j)),
                    (SegmentValue::Exact(i + 1), SegmentValue::Exact(j + 1)),
                ],
                color.filled(),
            )))?;
            let ink = if shade < 0.6 { WHITE } else { BLACK };
            let style = font(20)
                .pos(Pos::new(HPos::Center, VPos::Center))
                .color(&ink);
            chart.draw_series(std::iter::once(Text::new(
                format!("{v:.*}{}", self.decimals, self.unit),
                (SegmentValue::CenterOf(i), SegmentValue::CenterOf(j)),
                style,
            )))?;
        }
        Ok(())
    }
}

/// One run's history, one point per evaluation (epoch or iteration).
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend label.
    pub label: String,
    /// `(x, held-out accuracy %)`: test accuracy, or the GPT's next-character accuracy.
    pub accuracy: Vec<(f64, f64)>,
    /// `(x, held-out loss)`.
    pub test_loss: Vec<(f64, f64)>,
    /// `(x, train loss)`.
    pub train_loss: Vec<(f64, f64)>,
    /// `(x, sparsity %)`.
    pub sparsity: Vec<(f64, f64)>,
    /// `(x, ms per training step)`, where the run recorded it (sparse training shows here).
    pub step_ms: Vec<(f64, f64)>,
}

/// Plot 3: accuracy, loss and sparsity against training time for a few runs, and the time per
/// step beside the sparsity when the runs recorded it.
pub struct TrainingCurves {
    /// The runs.
    pub curves: Vec<Curve>,
    /// The x axis: "epoch" or "iteration".
    pub x_axis: &'static str,
    /// The held-out set: "test" or "validation".
    pub held_out: &'static str,
}

impl TrainingCurves {
    /// Whether any run recorded its step time (a fourth panel).
    fn with_speed(&self) -> bool {
        self.curves.iter().any(|c| !c.step_ms.is_empty())
    }
}

impl Figure for TrainingCurves {
    fn size(&self) -> (u32, u32) {
        (if self.with_speed() { 2200 } else { 1650 }, 550)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let panels = root.split_evenly((1, if self.with_speed() { 4 } else { 3 }));
        let x_end = self
            .curves
            .iter()
            .flat_map(|c| c.accuracy.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        type Pick = fn(&Curve) -> Vec<&[(f64, f64)]>;
        let (accuracy_title, accuracy_axis, loss_title) = (
            format!(
                "{}{} accuracy",
                &self.held_out[..1].to_uppercase(),
                &self.held_out[1..]
            ),
            format!("{} accuracy (%)", self.held_out),
            format!("Loss (solid: {}, dashed: train)", self.held_out),
        );
        let mut specs: Vec<(&str, &str, Pick)> = vec![
            (&accuracy_title, &accuracy_axis, |c| vec![&c.accuracy]),
            (&loss_title, "cross-entropy loss", |c| {
                vec![&c.test_loss, &c.train_loss]
            }),
            ("Sparsity", "sparsity (%)", |c| vec![&c.sparsity]),
        ];
        if self.with_speed() {
            specs.push(("Training speed", "ms per step", |c| vec![&c.step_ms]));
        }
        for (k, (panel, (title, y_desc, pick))) in panels.iter().zip(specs).enumerate() {
            let (lo, hi) = if k == 2 {
                (0.0, 100.0)
            } else {
                let values = self
                    .curves
                    .iter()
                    .flat_map(|c| pick(c).into_iter().flatten().map(|p| p.1));
                let (lo, hi) = padded_range(values, 0.0, 0.0);
                let pad = 0.05 * (hi - lo);
                (lo - pad, hi + pad)
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(title, font(22))
                .margin(15)
                .x_label_area_size(50)
                .y_label_area_size(65)
                .build_cartesian_2d(0f64..x_end, lo..hi)?;
            chart
                .configure_mesh()
                .x_desc(self.x_axis)
                .x_label_formatter(&|x| compact_number(*x))
                .y_desc(y_desc)
                .label_style(font(14))
                .axis_desc_style(font(18))
                .draw()?;
            for (i, curve) in self.curves.iter().enumerate() {
                let color = series_color(i);
                let mut series = pick(curve).into_iter();
                if let Some(main) = series.next() {
                    chart
                        .draw_series(LineSeries::new(main.to_vec(), color.stroke_width(3)))?
                        .label(&curve.label)
                        .legend(legend_line(color));
                }
                for dashed in series {
                    chart.draw_series(DashedLineSeries::new(
                        dashed.to_vec(),
                        6,
                        4,
                        color.stroke_width(2),
                    ))?;
                }
            }
            if k == 0 {
                draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 14)?;
            }
        }
        Ok(())
    }
}

/// The magnitudes of one run's decayed weights.
#[derive(Debug, Clone)]
pub struct Magnitudes {
    /// Legend label.
    pub label: String,
    /// `log10|w|` of the non-zero weights.
    pub log10: Vec<f64>,
    /// Exact zeros (no logarithm).
    pub zeros: usize,
}

impl Magnitudes {
    /// From raw weights.
    pub fn new(label: impl Into<String>, weights: &[f32]) -> Self {
        let log10: Vec<f64> = weights
            .iter()
            .filter(|w| **w != 0.0)
            .map(|w| (w.abs() as f64).log10())
            .collect();
        Self {
            label: label.into(),
            zeros: weights.len() - log10.len(),
            log10,
        }
    }

    fn total(&self) -> usize {
        self.log10.len() + self.zeros
    }
}

/// Plot 4: the distribution of |w| (histogram of log10|w| and its CDF), with the
/// suppression scale marked.
pub struct WeightDistribution {
    /// The runs.
    pub runs: Vec<Magnitudes>,
    /// `(p·lambda)^(1/(2-p))` and its label, when a pWD run is shown.
    pub scale: Option<(f64, String)>,
}

/// Bin width of the histogram, in decades.
const BIN: f64 = 0.25;

impl WeightDistribution {
    fn x_range(&self) -> (f64, f64) {
        let values = self
            .runs
            .iter()
            .flat_map(|r| r.log10.iter().copied())
            .chain(self.scale.as_ref().map(|s| s.0.log10()));
        let (lo, hi) = padded_range(values, 0.5, 0.5);
        (lo.floor(), hi.ceil())
    }
}

impl Figure for WeightDistribution {
    fn size(&self) -> (u32, u32) {
        (1500, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (lo, hi) = self.x_range();
        let bins = ((hi - lo) / BIN).ceil() as usize;
        let histograms: Vec<Vec<f64>> = self
            .runs
            .iter()
            .map(|r| {
                let mut counts = vec![0usize; bins];
                for &x in &r.log10 {
                    counts[(((x - lo) / BIN) as usize).min(bins - 1)] += 1;
                }
                // shares of the non-zero weights: a run that is 99% zeros still shows its shape
                let nonzero = r.log10.len().max(1) as f64;
                counts.iter().map(|&c| 100.0 * c as f64 / nonzero).collect()
            })
            .collect();
        let panels = root.split_evenly((1, 2));
        let scale_text = |chart: &mut ChartContext<DB, _>, top: f64| -> DrawResult<DB> {
            if let Some((scale, label)) = &self.scale {
                let x = scale.log10();
                let grey = RGBColor(90, 90, 90);
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x, 0.0), (x, top)],
                        8,
                        5,
                        grey.stroke_width(2),
                    ))?
                    .label(label.clone())
                    .legend(legend_line(grey));
            }
            Ok(())
        };
        let top = histograms.iter().flatten().fold(1.0f64, |a, &b| a.max(b)) * 1.08;
        let mut chart = ChartBuilder::on(&panels[0])
            .caption("Distribution of log10|w| (decayed weights)", font(22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(lo..hi, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("log10 |w|")
            .y_desc(format!(
                "share of the non-zero weights per {BIN} decade (%)"
            ))
            .label_style(font(14))
            .axis_desc_style(font(18))
            .draw()?;
        for (i, (run, hist)) in self.runs.iter().zip(&histograms).enumerate() {
            let color = series_color(i);
            let steps = hist.iter().enumerate().flat_map(|(k, &h)| {
                let left = lo + k as f64 * BIN;
                [(left, h), (left + BIN, h)]
            });
            let share = 100.0 * run.zeros as f64 / run.total().max(1) as f64;
            chart
                .draw_series(LineSeries::new(steps, color.stroke_width(2)))?
                .label(format!("{} ({share:.1}% exact zeros)", run.label))
                .legend(legend_line(color));
        }
        scale_text(&mut chart, top)?;
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 14)?;
        let mut chart = ChartBuilder::on(&panels[1])
            .caption("Cumulative share of weights with |w| <= x", font(22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(65)
            .build_cartesian_2d(lo..hi, 0.0..100.0)?;
        chart
            .configure_mesh()
            .x_desc("log10 x")
            .y_desc("weights with |w| <= x, zeros included (%)")
            .label_style(font(14))
            .axis_desc_style(font(18))
            .draw()?;
        for (i, run) in self.runs.iter().enumerate() {
            let color = series_color(i);
            let mut sorted = run.log10.clone();
            sorted.sort_by(f64::total_cmp);
            let total = run.total().max(1) as f64;
            let mut points = vec![(lo, 100.0 * run.zeros as f64 / total)];
            // one point per 1/200 of the range keeps the SVG small and the curve exact enough
            let step = (hi - lo) / 200.0;
            let mut below = 0;
            for k in 1..=200 {
                let x = lo + k as f64 * step;
                below += sorted[below..].partition_point(|&v| v <= x);
                points.push((x, 100.0 * (run.zeros + below) as f64 / total));
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(3)))?
                .label(run.label.clone())
                .legend(legend_line(color));
        }
        scale_text(&mut chart, 100.0)?;
        // left of the weights every curve is flat, at 0% or at the run's share of zeros
        draw_legend(&mut chart, SeriesLabelPosition::MiddleLeft, 14)
    }
}

/// One tensor's bar.
#[derive(Debug, Clone)]
pub struct LayerBar {
    /// The tensor's path.
    pub name: String,
    /// Sparsity in percent.
    pub sparsity: f64,
    /// Parameter count.
    pub params: u64,
    /// Whether it is decayed.
    pub decayed: bool,
}

/// Plot 5: per-tensor sparsity of one run.
pub struct LayerSparsity {
    /// The title.
    pub title: String,
    /// One bar per tensor, top to bottom.
    pub layers: Vec<LayerBar>,
}

impl Figure for LayerSparsity {
    fn size(&self) -> (u32, u32) {
        (1100, 160 + 55 * self.layers.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let n = self.layers.len();
        let names: Vec<String> = self
            .layers
            .iter()
            .rev()
            .map(|l| format!("{} ({})", l.name, l.params))
            .collect();
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(22))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(300)
            // one segment more than bars: the empty top row holds the legend
            .build_cartesian_2d(0f64..100f64, (0..n).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&move |v| {
                match v {
                    SegmentValue::CenterOf(j) => names.get(*j).cloned(),
                    _ => None,
                }
                .unwrap_or_default()
            })
            .x_desc("sparsity (%): weights with |w| below the threshold")
            .label_style(font(14))
            .axis_desc_style(font(18))
            .draw()?;
        let decayed = series_color(0);
        let other = RGBColor(170, 170, 170);
        for (j, layer) in self.layers.iter().rev().enumerate() {
            let color = if layer.decayed { decayed } else { other };
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(j)),
                    (layer.sparsity, SegmentValue::Exact(j + 1)),
                ],
                color.filled(),
            )))?;
            // the number sits at the end of the bar: inside it when the bar is long
            let (anchor, ink, text) = if layer.sparsity > 85.0 {
                (HPos::Right, WHITE, format!("{:.1}% ", layer.sparsity))
            } else {
                (HPos::Left, BLACK, format!(" {:.1}%", layer.sparsity))
            };
            chart.draw_series(std::iter::once(Text::new(
                text,
                (layer.sparsity, SegmentValue::CenterOf(j)),
                font(14).pos(Pos::new(anchor, VPos::Center)).color(&ink),
            )))?;
        }
        let legend = [("decayed", decayed), ("not decayed", other)];
        for (label, color) in legend {
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<usize>)>>())?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 20, y + 6)], color.filled())
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 14)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_speed_panel_appears_only_for_runs_that_recorded_step_times() {
        let curve = |step_ms: Vec<(f64, f64)>| Curve {
            label: "run".into(),
            accuracy: vec![(1.0, 80.0), (2.0, 85.0)],
            test_loss: vec![(1.0, 0.5), (2.0, 0.4)],
            train_loss: vec![(1.0, 0.6), (2.0, 0.45)],
            sparsity: vec![(1.0, 50.0), (2.0, 90.0)],
            step_ms,
        };
        let figure = |curves| TrainingCurves {
            curves,
            x_axis: "epoch",
            held_out: "test",
        };
        let old = figure(vec![curve(Vec::new())]);
        assert_eq!(old.size(), (1650, 550));
        let timed = figure(vec![curve(Vec::new()), curve(vec![(1.0, 2.0), (2.0, 1.2)])]);
        assert_eq!(timed.size(), (2200, 550));
        let dir = std::env::temp_dir().join(format!("pdecay-speed-panel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        save(&timed, &dir, "curves").unwrap();
        assert!(std::fs::metadata(dir.join("curves.png")).unwrap().len() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn magnitudes_count_zeros_apart() {
        let m = Magnitudes::new("x", &[0.0, 0.01, -10.0, 0.0, 1e-20]);
        assert_eq!(m.zeros, 2);
        let expected = [-2.0, 1.0, -20.0];
        for (a, b) in m.log10.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
