//! Histograms, the progress line, the summary, and the files: JSON summary,
//! HdrHistogram interval log, SVG percentile plot.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

pub const PERCENTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("p9999", 0.9999), ("max", 1.0)];

pub fn percentiles(histogram: &Histogram<u64>) -> Value {
    let mut object = serde_json::Map::new();
    for (name, quantile) in PERCENTILES {
        let value = if quantile >= 1.0 { histogram.max() } else { histogram.value_at_quantile(quantile) };
        object.insert(name.to_string(), json!(value));
    }
    Value::Object(object)
}

pub fn describe(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {} us, p99 {} us, p99.9 {} us, p99.99 {} us, max {} us",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.value_at_quantile(0.9999),
        histogram.max()
    )
}

/// One reporting interval of publish and end-to-end latency.
pub struct Interval {
    pub start: Duration,
    pub length: Duration,
    pub publish: Histogram<u64>,
    pub e2e: Histogram<u64>,
}

pub fn write_hdr_log(path: &str, intervals: &[Interval], run_started: SystemTime) -> Result<(), String> {
    let mut file = std::fs::File::create(path).map_err(|error| format!("{path}: {error}"))?;
    let mut serializer = V2Serializer::new();
    let mut writer = IntervalLogWriterBuilder::new()
        .with_start_time(run_started)
        .with_base_time(run_started)
        .with_max_value_divisor(1.0)
        .begin_log_with(&mut file, &mut serializer)
        .map_err(|error| format!("{path}: {error}"))?;
    writer
        .write_comment("ringmq-load: latency in microseconds; tags publish and e2e")
        .map_err(|error| format!("{path}: {error}"))?;
    for interval in intervals {
        for (tag, histogram) in [("publish", &interval.publish), ("e2e", &interval.e2e)] {
            let tag = Tag::new(tag);
            writer
                .write_histogram(histogram, interval.start, interval.length, tag)
                .map_err(|error| format!("{path}: {error:?}"))?;
        }
    }
    Ok(())
}

/// Latency against percentile on a log scale of 1 / (1 - percentile), as
/// HdrHistogram plots it.
pub fn write_svg(path: &str, series: &[(&str, &str, &Histogram<u64>)]) -> Result<(), String> {
    const WIDTH: f64 = 900.0;
    const HEIGHT: f64 = 500.0;
    const MARGIN: f64 = 70.0;
    let nines_max = 5.0;
    let quantiles: Vec<f64> = (0..=500).map(|step| 1.0 - 10f64.powf(-(step as f64) / 100.0)).collect();
    let latency_max = series.iter().map(|(_, _, histogram)| histogram.max()).max().unwrap_or(1).max(1) as f64;
    let x = |quantile: f64| MARGIN + (-(1.0 - quantile).max(1e-5).log10() / nines_max) * (WIDTH - 2.0 * MARGIN);
    let y = |latency: f64| HEIGHT - MARGIN - latency / latency_max * (HEIGHT - 2.0 * MARGIN);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    svg += &format!("<text x='{}' y='24' font-size='16'>ringmq-load latency by percentile</text>\n", MARGIN);
    svg +=
        &format!("<line x1='{MARGIN}' y1='{0}' x2='{1}' y2='{0}' stroke='black'/>\n", HEIGHT - MARGIN, WIDTH - MARGIN);
    svg += &format!("<line x1='{MARGIN}' y1='{MARGIN}' x2='{MARGIN}' y2='{}' stroke='black'/>\n", HEIGHT - MARGIN);
    for (label, quantile) in
        [("0%", 0.0), ("90%", 0.9), ("99%", 0.99), ("99.9%", 0.999), ("99.99%", 0.9999), ("99.999%", 0.99999)]
    {
        let position = x(quantile);
        svg +=
            &format!("<line x1='{position}' y1='{MARGIN}' x2='{position}' y2='{}' stroke='#ddd'/>\n", HEIGHT - MARGIN);
        svg += &format!("<text x='{position}' y='{}' text-anchor='middle'>{label}</text>\n", HEIGHT - MARGIN + 18.0);
    }
    for step in 0..=4 {
        let latency = latency_max * f64::from(step) / 4.0;
        let position = y(latency);
        svg +=
            &format!("<line x1='{MARGIN}' y1='{position}' x2='{}' y2='{position}' stroke='#eee'/>\n", WIDTH - MARGIN);
        svg +=
            &format!("<text x='{}' y='{}' text-anchor='end'>{:.0} us</text>\n", MARGIN - 6.0, position + 4.0, latency);
    }
    svg += &format!("<text x='{}' y='{}' text-anchor='middle'>percentile</text>\n", WIDTH / 2.0, HEIGHT - 20.0);
    for (index, (name, color, histogram)) in series.iter().enumerate() {
        if histogram.is_empty() {
            continue;
        }
        let points: Vec<String> = quantiles
            .iter()
            .map(|quantile| format!("{:.1},{:.1}", x(*quantile), y(histogram.value_at_quantile(*quantile) as f64)))
            .collect();
        svg += &format!("<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n", points.join(" "));
        // The legend sits top left, where the curves start low.
        let legend_y = MARGIN + 18.0 * index as f64;
        svg += &format!("<rect x='{}' y='{}' width='14' height='4' fill='{color}'/>\n", MARGIN + 16.0, legend_y - 4.0);
        svg += &format!(
            "<text x='{}' y='{legend_y}'>{name} (p50 {} us, max {} us)</text>\n",
            MARGIN + 36.0,
            histogram.value_at_quantile(0.5),
            histogram.max()
        );
    }
    svg += "</svg>\n";
    std::fs::write(path, svg).map_err(|error| format!("{path}: {error}"))
}
