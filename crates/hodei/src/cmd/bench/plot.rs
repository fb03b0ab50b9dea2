//! SVG plots of a run: the latency distribution (one CDF per measure) and
//! throughput over time (jobs finished per interval).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::report::Report;

const SIZE: (u32, u32) = (720, 420);
const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// Writes the plots a report has data for into `dir`.
pub fn write(dir: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !report.latency.is_empty() {
        let path = dir.join("bench-latency.svg");
        latency_cdf(&path, &report.latency).map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if !report.finished_at.is_empty() {
        let path = dir.join("bench-throughput.svg");
        throughput(&path, &report.finished_at).map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// The empirical CDF of each measure, in milliseconds.
fn latency_cdf(path: &Path, series: &[(String, Vec<f64>)]) -> PlotResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("hodei bench latency: CDF", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds from submit")
        .y_desc("fraction of jobs")
        .draw()?;
    for (i, (name, values)) in series.iter().enumerate() {
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let color = COLORS[i % COLORS.len()];
        let points = v.iter().enumerate().map(|(k, x)| (*x, (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Jobs finished per second, in buckets of a tenth of the run (at least
/// 100 ms), against time from the first submit.
fn throughput(path: &Path, finished_at: &[f64]) -> PlotResult {
    let end = finished_at
        .iter()
        .copied()
        .fold(0.0f64, f64::max)
        .max(0.001);
    let bucket = (end / 40.0).max(0.1);
    let buckets = (end / bucket).ceil() as usize;
    let mut counts = vec![0u64; buckets.max(1)];
    for t in finished_at {
        let i = ((t / bucket) as usize).min(counts.len() - 1);
        counts[i] += 1;
    }
    let rates: Vec<(f64, f64)> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| ((i as f64 + 0.5) * bucket, *c as f64 / bucket))
        .collect();
    let top = rates
        .iter()
        .map(|(_, r)| *r)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let mean = finished_at.len() as f64 / end;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("hodei bench throughput: {} no-op jobs", finished_at.len()),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds from the first submit")
        .y_desc("jobs finished per second")
        .draw()?;
    chart
        .draw_series(LineSeries::new(rates, COLORS[0].stroke_width(2)))?
        .label("per interval")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], COLORS[0].stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            [(0.0, mean), (end, mean)],
            COLORS[1].stroke_width(1),
        ))?
        .label(format!("mean {mean:.0}/s"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], COLORS[1].stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
