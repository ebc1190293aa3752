//! Plots of a run, each as PNG and SVG (plotters): TTFT CDF per target and
//! level, throughput against the level, TTFT p50/p99 against the level, and the
//! distribution of inter-token latency per target. Text in PNGs uses an embedded
//! DejaVu Sans, so no system fonts are needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::runner::BenchResult;
use crate::stats::percentile;

type Res<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

const SIZE: (u32, u32) = (1000, 620);

fn fonts() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| "cannot load the embedded font".to_string())
    })
    .clone()
}

/// Writes every plot into `dir` as `<name>.png` and `<name>.svg`; returns the names.
pub fn write_all(r: &BenchResult, dir: &Path) -> Result<Vec<String>, String> {
    fonts()?;
    let mut names = Vec::new();
    for (name, plot) in [
        ("ttft_cdf", Plot::TtftCdf),
        ("throughput", Plot::Throughput),
        ("ttft_vs_level", Plot::TtftVsLevel),
        ("itl_cdf", Plot::ItlCdf),
    ] {
        let png_path = dir.join(format!("{name}.png"));
        let svg_path = dir.join(format!("{name}.svg"));
        {
            let area = BitMapBackend::new(&png_path, SIZE).into_drawing_area();
            draw(plot, r, &area).map_err(|e| format!("{}: {e}", png_path.display()))?;
            area.present()
                .map_err(|e| format!("{}: {e}", png_path.display()))?;
        }
        {
            let area = SVGBackend::new(&svg_path, SIZE).into_drawing_area();
            draw(plot, r, &area).map_err(|e| format!("{}: {e}", svg_path.display()))?;
            area.present()
                .map_err(|e| format!("{}: {e}", svg_path.display()))?;
        }
        names.push(format!("{name}.png"));
    }
    Ok(names)
}

#[derive(Clone, Copy)]
enum Plot {
    TtftCdf,
    Throughput,
    TtftVsLevel,
    ItlCdf,
}

fn draw<DB: DrawingBackend>(plot: Plot, r: &BenchResult, area: &DrawingArea<DB, Shift>) -> Res<DB> {
    match plot {
        Plot::TtftCdf => ttft_cdf(r, area),
        Plot::Throughput => throughput(r, area),
        Plot::TtftVsLevel => ttft_vs_level(r, area),
        Plot::ItlCdf => itl_cdf(r, area),
    }
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    COLORS[i % COLORS.len()]
}

/// Sorted values → CDF points (x in ms).
fn cdf(mut v: Vec<f64>) -> Vec<(f64, f64)> {
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter()
        .enumerate()
        .map(|(i, x)| (x * 1e3, (i + 1) as f64 / n))
        .collect()
}

fn x_limit(all: &[f64]) -> f64 {
    let mut v: Vec<f64> = all.iter().map(|x| x * 1e3).collect();
    v.sort_by(f64::total_cmp);
    (percentile(&v, 99.5).unwrap_or(1.0) * 1.05).max(1e-3)
}

fn subtitle(r: &BenchResult) -> String {
    r.workload.clone()
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type AreaResult<T, DB> = Result<T, DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// What frames a chart: title, subtitle, axis ranges and descriptions.
struct Frame<'a> {
    title: &'a str,
    sub: &'a str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &'a str,
    y_desc: &'a str,
}

/// Fills the plot, draws title and subtitle; returns the area below them.
fn titled<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    f: &Frame<'_>,
) -> AreaResult<DrawingArea<DB, Shift>, DB> {
    area.fill(&WHITE)?;
    let (top, body) = area.split_vertically(50);
    top.titled(f.title, ("sans-serif", 24))?;
    top.draw(&Text::new(
        f.sub.to_string(),
        (10, 32),
        ("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
    ))?;
    Ok(body)
}

/// The axes every plot shares, on `body`.
fn axes<'b, DB: DrawingBackend>(
    body: &'b DrawingArea<DB, Shift>,
    f: Frame<'_>,
) -> AreaResult<Chart<'b, DB>, DB> {
    let mut chart = ChartBuilder::on(body)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(f.x, f.y)?;
    chart
        .configure_mesh()
        .x_desc(f.x_desc)
        .y_desc(f.y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    Ok(chart)
}

fn legend<'b, DB: DrawingBackend + 'b>(
    chart: &mut Chart<'b, DB>,
    at: SeriesLabelPosition,
) -> Res<DB> {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(at)
        .draw()
}

fn cdf_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    sub: &str,
    series: Vec<(String, Vec<f64>, usize)>,
) -> Res<DB> {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .collect();
    let frame = Frame {
        title,
        sub,
        x: 0.0..x_limit(&all),
        y: 0.0..1.0,
        x_desc,
        y_desc,
    };
    let body = titled(area, &frame)?;
    let mut chart = axes(&body, frame)?;
    for (name, values, ci) in series {
        let style = color(ci).stroke_width(2);
        chart
            .draw_series(LineSeries::new(cdf(values), style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn ttft_cdf<DB: DrawingBackend>(r: &BenchResult, area: &DrawingArea<DB, Shift>) -> Res<DB> {
    let series = r
        .levels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let v = l
                .records
                .iter()
                .filter(|x| x.ok)
                .filter_map(|x| x.ttft)
                .collect();
            (format!("{} {}", l.target, l.label), v, i)
        })
        .collect();
    cdf_chart(
        area,
        "Time to first token (CDF)",
        "TTFT (ms)",
        "fraction of requests ≤ x",
        &subtitle(r),
        series,
    )
}

fn itl_cdf<DB: DrawingBackend>(r: &BenchResult, area: &DrawingArea<DB, Shift>) -> Res<DB> {
    let series = r
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let v = r
                .of_target(&t.name)
                .flat_map(|l| {
                    l.records
                        .iter()
                        .filter(|x| x.ok)
                        .flat_map(|x| x.itl.iter().copied())
                })
                .collect();
            (format!("{} (all levels)", t.name), v, i)
        })
        .collect();
    cdf_chart(
        area,
        "Inter-token latency (CDF)",
        "gap between streamed tokens (ms)",
        "fraction of gaps ≤ x",
        &subtitle(r),
        series,
    )
}

fn level_chart<DB: DrawingBackend>(
    r: &BenchResult,
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
) -> Res<DB> {
    let (xmin, xmax) = r.levels.iter().fold((f64::MAX, f64::MIN), |(a, b), l| {
        (a.min(l.level), b.max(l.level))
    });
    let pad = ((xmax - xmin) * 0.05).max(0.5);
    let ymax = r
        .levels
        .iter()
        .flat_map(|l| lines.iter().filter_map(|(_, f, _)| f(&l.summary)))
        .fold(0.0f64, f64::max)
        * 1.15;
    let sub = subtitle(r);
    let frame = Frame {
        title,
        sub: &sub,
        x: (xmin - pad)..(xmax + pad),
        y: 0.0..ymax.max(1e-6),
        x_desc: r.mode.axis(),
        y_desc,
    };
    let body = titled(area, &frame)?;
    let mut chart = axes(&body, frame)?;
    for (ti, t) in r.targets.iter().enumerate() {
        for (name, f, dashed) in lines {
            let pts: Vec<(f64, f64)> = r
                .of_target(&t.name)
                .filter_map(|l| f(&l.summary).map(|y| (l.level, y)))
                .collect();
            let style = color(ti).stroke_width(2);
            let label = if name.is_empty() {
                t.name.clone()
            } else {
                format!("{} {name}", t.name)
            };
            if *dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style))?
                    .label(label)
                    .legend(move |(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new(vec![(0, 0), (8, 0)], style)
                            + PathElement::new(vec![(12, 0), (20, 0)], style)
                    });
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color(ti).filled())))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

/// One line per target: (label suffix, the value, dashed).
type Line = (
    &'static str,
    fn(&crate::stats::Summary) -> Option<f64>,
    bool,
);

fn throughput<DB: DrawingBackend>(r: &BenchResult, area: &DrawingArea<DB, Shift>) -> Res<DB> {
    level_chart(
        r,
        area,
        "Output throughput",
        "output tokens / s",
        &[("", |s| Some(s.output_tokens_per_s), false)],
    )
}

fn ttft_vs_level<DB: DrawingBackend>(r: &BenchResult, area: &DrawingArea<DB, Shift>) -> Res<DB> {
    level_chart(
        r,
        area,
        "Time to first token, p50 (solid) and p99 (dashed)",
        "TTFT (ms)",
        &[
            ("p50", |s| s.ttft.p50.map(|x| x * 1e3), false),
            ("p99", |s| s.ttft.p99.map(|x| x * 1e3), true),
        ],
    )
}
