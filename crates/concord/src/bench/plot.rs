//! The bench's two plots, as plain SVG (no plotting library): the distribution of the
//! replication lag, and the write throughput per durability level beside the peers'.

use std::fmt::Write;
use std::path::Path;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const BOTTOM: f64 = 50.0;
const TOP: f64 = 40.0;
const RIGHT: f64 = 20.0;

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        W / 2.0
    )
}

/// The lag distribution: the share of sampled writes visible in the other region
/// within x ms (a cumulative curve), with p50 and p99 marked.
pub fn lag(path: &Path, samples_ms: &mut [f64]) -> anyhow::Result<()> {
    samples_ms.sort_by(|a, b| a.total_cmp(b));
    let n = samples_ms.len();
    let mut svg = header(&format!("Replication lag to another region's follower ({n} sampled writes)"));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let q = |f: f64| if n == 0 { 0.0 } else { samples_ms[((n - 1) as f64 * f).round() as usize] };
    // The x axis reaches a little past p99.9, so the tail's shape shows.
    let xmax = nice(q(0.999).max(1.0) * 1.1);
    let x = |ms: f64| LEFT + (ms.min(xmax) / xmax) * pw;
    let y = |share: f64| TOP + (1.0 - share) * ph;
    axes(&mut svg, "lag (ms): acknowledgement in one region to a read of it in another", "share of writes");
    for i in 0..=5 {
        let v = xmax * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(v),
            H - BOTTOM + 16.0,
            label(v)
        );
        let s = i as f64 / 5.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            LEFT - 6.0,
            y(s) + 4.0,
            s * 100.0
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            W - RIGHT,
            y(s),
            y(s)
        );
    }
    let mut points = String::new();
    let step = (n / 800).max(1);
    for (i, v) in samples_ms.iter().enumerate().step_by(step) {
        let _ = write!(points, "{:.1},{:.1} ", x(*v), y((i + 1) as f64 / n as f64));
    }
    if let Some(last) = samples_ms.last() {
        let _ = write!(points, "{:.1},{:.1}", x(*last), y(1.0));
    }
    let _ = writeln!(svg, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{points}\"/>");
    for (name, f, color) in [("p50", 0.5, "#2ca02c"), ("p99", 0.99, "#d62728")] {
        let v = q(f);
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{1:.1}\" stroke=\"{color}\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" fill=\"{color}\">{name} {4:.1} ms</text>",
            x(v),
            H - BOTTOM,
            x(v) + 4.0,
            y(f) + if f > 0.9 { 14.0 } else { -4.0 },
            v
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)?;
    Ok(())
}

/// Bars: (label, writes/s, is Concord's).
pub fn throughput(path: &Path, bars: &[(String, f64, bool)]) -> anyhow::Result<()> {
    let mut svg = header("Acknowledged writes per second, 50 clients, 128-byte values (one run)");
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM - 40.0);
    let ymax = nice(bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.1);
    let y = |v: f64| TOP + (1.0 - v / ymax) * ph;
    axes_at(&mut svg, H - BOTTOM - 40.0, "", "writes/s");
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            y(v) + 4.0,
            label(v)
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            W - RIGHT,
            y(v),
            y(v)
        );
    }
    let slot = pw / bars.len().max(1) as f64;
    for (i, (name, v, ours)) in bars.iter().enumerate() {
        let x0 = LEFT + slot * i as f64 + slot * 0.15;
        let color = if *ours { "#1f77b4" } else { "#999" };
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\
             <text transform=\"translate({:.1},{:.1}) rotate(30)\" font-size=\"11\">{name}</text>",
            y(*v),
            slot * 0.7,
            y(0.0) - y(*v),
            x0 + slot * 0.35,
            y(*v) - 4.0,
            label(*v),
            x0 + 2.0,
            y(0.0) + 14.0,
        );
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)?;
    Ok(())
}

fn axes(svg: &mut String, xlabel: &str, ylabel: &str) {
    axes_at(svg, H - BOTTOM, xlabel, ylabel);
}

fn axes_at(svg: &mut String, base: f64, xlabel: &str, ylabel: &str) {
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\" stroke=\"black\"/>\
         <line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel}</text>\
         <text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{ylabel}</text>",
        W - RIGHT,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0,
        TOP + (base - TOP) / 2.0
    );
}

/// A round number at or above `x` (1, 2 or 5 times a power of ten).
fn nice(x: f64) -> f64 {
    let p = 10f64.powf(x.max(1e-9).log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|v| *v >= x).unwrap_or(10.0 * p)
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_rounds_up_to_one_two_or_five() {
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(12.0), 20.0);
        assert_eq!(nice(41_000.0), 50_000.0);
        assert_eq!(nice(0.3), 0.5);
    }
}
