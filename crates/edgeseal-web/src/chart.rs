//! Charts of a stream, drawn on the server as SVG with `plotters`: the
//! values of a time range from the store (verified and opened, as `fetch`
//! reads them) and the newest ones the store does not hold yet, with axes,
//! the unit and a time scale in the zone times are shown in. Long ranges are
//! reduced to one point per pixel column (mean, with the min–max band), so a
//! week costs what an hour does to draw.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use edgeseal_agent::live::Live;
use edgeseal_agent::service::Service;
use edgeseal_agent::times::{Zone, output_zone};
use edgeseal_agent::{Error, now_ms};
use edgeseal_core::{Readings, StreamName};
use plotters::prelude::*;

use crate::ApiError;

/// The spans the dashboard offers.
pub const RANGES: [(&str, &str, i64); 3] =
    [("hour", "last hour", 3_600_000), ("day", "last day", 86_400_000), ("week", "last week", 604_800_000)];

/// The span of a `range` name (default: an hour).
pub fn span_of(range: Option<&str>) -> Result<i64, Error> {
    match range {
        None | Some("") => Ok(RANGES[0].2),
        Some(r) => RANGES
            .iter()
            .find(|(name, ..)| *name == r)
            .map(|(.., ms)| *ms)
            .ok_or_else(|| Error::bad(format!("range {r:?}: use {}", RANGES.map(|(n, ..)| n).join(", ")))),
    }
}

/// What a chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub title: String,
    pub unit: String,
    /// (ms, value), oldest first.
    pub points: Vec<(i64, f64)>,
    pub from: i64,
    pub to: i64,
}

const WIDTH: u32 = 480;
const HEIGHT: u32 = 220;
/// Pixel columns the plot area has, about: one reduced point each.
const COLUMNS: i64 = 400;

/// One pixel column's values: (mid time, mean, min, max).
type Column = (i64, f64, f64, f64);

/// The points reduced to at most [`COLUMNS`] columns over `from..=to`; a column without values is a gap.
fn columns(points: &[(i64, f64)], from: i64, to: i64) -> Vec<Option<Column>> {
    let span = (to - from).max(1);
    let mut acc: Vec<(f64, f64, f64, usize)> = vec![(0.0, f64::INFINITY, f64::NEG_INFINITY, 0); COLUMNS as usize];
    for &(t, v) in points.iter().filter(|(t, v)| (from..=to).contains(t) && v.is_finite()) {
        let i = usize::try_from(((i128::from(t - from) * i128::from(COLUMNS - 1)) / i128::from(span)) as i64)
            .unwrap_or(0)
            .min(COLUMNS as usize - 1);
        let a = &mut acc[i];
        *a = (a.0 + v, a.1.min(v), a.2.max(v), a.3 + 1);
    }
    acc.iter()
        .enumerate()
        .map(|(i, &(sum, lo, hi, n))| (n > 0).then(|| (from + span * i as i64 / (COLUMNS - 1), sum / n as f64, lo, hi)))
        .collect()
}

/// How far apart two columns may be and still be joined by the line: three
/// times the readings' usual spacing (the median), and never less than two
/// columns.
fn gap_at(points: &[(i64, f64)], column: i64) -> i64 {
    let mut steps: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).filter(|d| *d > 0).collect();
    steps.sort_unstable();
    let usual = steps.get(steps.len() / 2).copied().unwrap_or(0);
    (3 * usual).max(2 * column + 1)
}

/// The value axis: the data's range with a margin, but never narrower than
/// the unit calls for, so that sensor noise does not fill the height.
fn value_axis(cols: &[Column], unit: &str) -> (f64, f64) {
    let lo = cols.iter().map(|c| c.2).fold(f64::INFINITY, f64::min);
    let hi = cols.iter().map(|c| c.3).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let least = match unit {
        "°C" | "C" | "degC" | "°F" => 2.0,
        "%" | "%RH" => 5.0,
        _ => (hi.abs().max(lo.abs()) * 0.05).max(1.0),
    };
    let span = ((hi - lo) * 1.2).max(least);
    let mid = (hi + lo) / 2.0;
    (mid - span / 2.0, mid + span / 2.0)
}

/// Where the time axis has its labels: every 10 minutes for an hour, 3 hours
/// for a day, a day for a week (or the nearest step for other spans), on
/// round times of `zone` (its offset at `from`).
fn time_ticks(zone: &Zone, from: i64, to: i64) -> Vec<i64> {
    const MIN: i64 = 60_000;
    let steps = [MIN, 5 * MIN, 10 * MIN, 30 * MIN, 60 * MIN, 180 * MIN, 360 * MIN, 1440 * MIN, 7 * 1440 * MIN];
    let span = to - from;
    let step = steps.iter().copied().find(|s| span / s <= 8).unwrap_or(30 * 1440 * MIN);
    let offset = zone.offset_ms(from);
    let first = (from + offset).div_euclid(step) * step + step - offset;
    (0..).map(|k| first + k * step).take_while(|t| *t <= to).collect()
}

/// A time as the axis labels it, in `zone`: HH:MM within a day, else MM-DD HH:MM.
fn time_label(zone: &Zone, t: i64, span: i64) -> String {
    let full = zone.format(t); // 2026-01-01T01:00:00.000+01:00
    let (date, time) = (full.get(5..10).unwrap_or(""), full.get(11..16).unwrap_or(""));
    if span <= 86_400_000 { time.to_string() } else { format!("{date} {time}") }
}

/// The chart as an SVG document.
pub fn svg(s: &Series, zone: &Zone) -> String {
    let mut out = String::new();
    // Drawing into a string cannot fail but for a range plotters refuses; then the chart says so.
    if let Err(e) = draw(&mut out, s, zone) {
        out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\"><text x=\"8\" y=\"20\">\
             cannot draw this chart: {}</text></svg>",
            e.to_string().replace(['<', '>', '&'], " ")
        );
    }
    out
}

fn draw(out: &mut String, s: &Series, zone: &Zone) -> Result<(), Box<dyn std::error::Error>> {
    let (from, to) = (s.from, s.to.max(s.from + 1));
    let present: Vec<Column> = columns(&s.points, from, to).into_iter().flatten().collect();
    let (lo, hi) = value_axis(&present, &s.unit);
    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let accent = RGBColor(14, 116, 144);
    let muted = RGBColor(102, 112, 133);
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.title, ("sans-serif", 17).into_font().color(&RGBColor(29, 35, 48)))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(58)
        .build_cartesian_2d((from..to).with_key_points(time_ticks(zone, from, to)), lo..hi)?;
    let span = to - from;
    chart
        .configure_mesh()
        .y_labels(5)
        .x_label_formatter(&|t| time_label(zone, *t, span))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .x_desc(format!("time ({})", zone.name()))
        .y_desc(s.unit.as_str())
        .label_style(("sans-serif", 14).into_font().color(&muted))
        .axis_desc_style(("sans-serif", 14).into_font().color(&muted))
        .light_line_style(RGBColor(242, 244, 247))
        .bold_line_style(RGBColor(228, 231, 236))
        .draw()?;
    // Runs of columns with values: a band (min to max) and the mean line, broken where the readings stop for
    // longer than their usual spacing.
    let apart = gap_at(&s.points, span / COLUMNS);
    let mut runs: Vec<Vec<Column>> = Vec::new();
    for c in &present {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|p| c.0 - p.0 <= apart) => run.push(*c),
            _ => runs.push(vec![*c]),
        }
    }
    for run in runs {
        if run.iter().any(|c| c.3 > c.2) {
            let band: Vec<(i64, f64)> =
                run.iter().map(|c| (c.0, c.3)).chain(run.iter().rev().map(|c| (c.0, c.2))).collect();
            chart.draw_series(std::iter::once(Polygon::new(band, accent.mix(0.15).filled())))?;
        }
        if run.len() == 1 {
            chart.draw_series(std::iter::once(Circle::new((run[0].0, run[0].1), 2, accent.filled())))?;
        } else {
            chart.draw_series(LineSeries::new(run.iter().map(|c| (c.0, c.1)), accent.stroke_width(2)))?;
        }
    }
    if present.is_empty() {
        root.draw(&Text::new(
            "no readings in this range",
            ((WIDTH / 2 - 80) as i32, (HEIGHT / 2) as i32),
            ("sans-serif", 16).into_font().color(&muted),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// A stream's values over `from..=to`: the store's (verified and opened),
/// then the live ones newer than what the store holds.
pub async fn series(
    service: &Service,
    live: &Live,
    device: &str,
    name: &StreamName,
    from: i64,
    to: i64,
) -> Result<Series, Error> {
    let stream = name.as_str();
    let got = service.retrieve(name, Some(device), Some(from), Some(to)).await?;
    let (mut points, mut unit) = (Vec::new(), String::new());
    for r in got.open(0..got.read.rows.len()).into_iter().flatten().flatten() {
        if let Readings::Scalar(b) = r {
            unit = b.unit.clone();
            points.extend(b.ts.iter().copied().zip(b.values.iter().copied()).filter(|(t, _)| (from..=to).contains(t)));
        }
    }
    let newest = points.last().map_or(from - 1, |p| p.0);
    let device = got.device.to_string();
    points.extend(live.recent(&device, stream, newest).into_iter().filter(|(t, _)| *t <= to));
    if unit.is_empty() {
        unit = live.latest_unit(&device, stream).unwrap_or_default();
    }
    Ok(Series { title: stream.to_string(), unit, points, from, to })
}

pub fn router(service: Arc<Service>, live: Arc<Live>) -> axum::Router {
    axum::Router::new().route("/charts/{device}/{stream}", axum::routing::get(chart)).with_state((service, live))
}

#[derive(Debug, serde::Deserialize)]
pub struct ChartQuery {
    range: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /charts/{device}/{stream}?range=hour|day|week` (or `from`/`to`): the chart as SVG.
pub async fn chart(
    State((service, live)): State<(Arc<Service>, Arc<Live>)>,
    Path((device, stream)): Path<(String, String)>,
    Query(q): Query<ChartQuery>,
) -> Result<Response, ApiError> {
    let (name, from, to) = crate::api::parse_range(&stream, q.from.as_deref(), q.to.as_deref())?;
    let to = to.unwrap_or_else(now_ms);
    let from = match from {
        Some(f) => f,
        None => to.saturating_sub(span_of(q.range.as_deref())?),
    };
    if from >= to {
        return Err(Error::bad("from is not before to").into());
    }
    let s = series(&service, &live, &device, &name, from, to).await?;
    let body = svg(&s, &output_zone());
    Ok(([(CONTENT_TYPE, "image/svg+xml"), (CACHE_CONTROL, "no-store")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_week_is_reduced_to_columns_and_gaps_stay_gaps() {
        let week = 604_800_000;
        // A reading a second for the first half, none for the second.
        let points: Vec<(i64, f64)> = (0..week / 2 / 1000).map(|i| (i * 1000, (i % 10) as f64)).collect();
        let cols = columns(&points, 0, week);
        assert_eq!(cols.len(), COLUMNS as usize);
        let filled = cols.iter().filter(|c| c.is_some()).count();
        assert!((COLUMNS as usize / 2 - 1..=COLUMNS as usize / 2 + 1).contains(&filled), "{filled}");
        let c = cols[0].unwrap();
        assert_eq!((c.2, c.3), (0.0, 9.0));
    }

    #[test]
    fn ticks_fall_on_round_times_of_the_zone() {
        let from = 1_767_225_600_000 + 7 * 60_000; // 00:07Z
        assert_eq!(time_ticks(&Zone::UTC, from, from + 3_600_000)[0], 1_767_225_600_000 + 10 * 60_000);
        let india = Zone::parse("+05:30").unwrap();
        let day = time_ticks(&india, from, from + 86_400_000);
        // Every 3 hours at 06:00, 09:00, … in India (00:30Z, 03:30Z, …).
        assert_eq!(day[0], 1_767_225_600_000 + 30 * 60_000);
        assert_eq!(day[1] - day[0], 3 * 3_600_000);
    }

    #[test]
    fn the_line_breaks_only_where_readings_stop() {
        // Every 10 s: finer than the columns of an hour (9 s), so some columns are empty, and that is no gap.
        let points: Vec<(i64, f64)> = (0..360).map(|i| (i * 10_000, 1.0)).collect();
        assert_eq!(gap_at(&points, 3_600_000 / COLUMNS), 30_000);
        let s = Series { title: "t".into(), unit: "u".into(), points, from: 0, to: 3_600_000 };
        // The line is the accent's polyline of width 2; axes and ticks are others.
        let lines = |s: &Series| super::svg(s, &Zone::UTC).matches("stroke=\"#0E7490\" stroke-width=\"2\"").count();
        assert_eq!(lines(&s), 1);
        // A stop of ten minutes is.
        let stopped: Vec<(i64, f64)> =
            (0..360).filter(|i| !(100..160).contains(i)).map(|i| (i * 10_000, 1.0)).collect();
        assert_eq!(lines(&Series { points: stopped, ..s }), 2);
    }

    #[test]
    fn noise_does_not_fill_the_height() {
        let cols = [(0, 21.0, 20.9, 21.1)];
        let (lo, hi) = value_axis(&cols, "°C");
        assert!(hi - lo >= 2.0 && lo < 20.9 && hi > 21.1, "{lo}..{hi}");
    }

    #[test]
    fn the_svg_has_axes_a_unit_and_times_in_the_zone() {
        let from = 1_767_225_600_000; // 2026-01-01T00:00Z
        let points = (0..3600).map(|i| (from + i * 1000, 20.0 + (i % 60) as f64 / 60.0)).collect();
        let s = Series { title: "temperature".into(), unit: "°C".into(), points, from, to: from + 3_600_000 };
        let paris = Zone::parse("Europe/Paris").unwrap();
        let svg = svg(&s, &paris);
        assert!(svg.starts_with("<svg") && svg.contains("°C") && svg.contains("time (Europe/Paris)"), "{svg}");
        for label in ["01:10", "01:20", "01:50"] {
            assert!(svg.contains(&format!("\n{label}\n")), "{label} (times in Paris): {svg}");
        }
        assert!(svg.contains("<polyline") || svg.contains("<path"), "no line: {svg}");
        let empty = Series { points: Vec::new(), ..s };
        assert!(super::svg(&empty, &Zone::UTC).contains("no readings in this range"));
    }
}
