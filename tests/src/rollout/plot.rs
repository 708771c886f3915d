//! The rollout's timeline as an SVG chart (plotters): every replica's
//! in-flight count (its `drainpipe_inflight`) over time, and the moments
//! each was added to the front's endpoints, began its drain, was removed
//! from the endpoints, was drained and exited.

use std::path::Path;

use plotters::prelude::*;

use super::Report;

/// Line colours, one per replica (matplotlib's "tab10", darkest first).
const COLORS: [RGBColor; 10] = [
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

/// Draws `report`'s timeline into `path`.
pub fn timeline(report: &Report, path: &Path) -> anyhow::Result<()> {
    let secs = |ms: u64| ms as f64 / 1000.0;
    let t_max = secs(report.load_ms.max(1));
    let y_top = report
        .samples
        .iter()
        .flat_map(|s| s.replica_inflight.iter().flatten())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.7;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let p = &report.plan;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Rolling update of {} replicas behind an Envoy front: {} requests, {} failed at the client",
                p.replicas,
                report.sent,
                report.sent - report.completed
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..t_max, 0f64..y_top)?;
    chart
        .configure_mesh()
        .x_desc("time since the load started (s)")
        .y_desc("requests in flight (drainpipe_inflight)")
        .x_labels(16)
        .y_labels(8)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;

    let shade = RGBColor(245, 240, 225);
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [
                (secs(report.rollout_start_ms), 0.0),
                (secs(report.rollout_end_ms), y_top),
            ],
            shade.filled(),
        )))?
        .label("rolling update")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.filled()));

    // The in-flight count of replica `i` nearest to `ms` (0 once gone).
    let at = |i: usize, ms: u64| -> f64 {
        report
            .samples
            .iter()
            .filter_map(|s| {
                let v = s.replica_inflight.get(i).copied().flatten()?;
                Some((s.t_ms.abs_diff(ms), v))
            })
            .min_by_key(|(d, _)| *d)
            .map(|(_, v)| v as f64)
            .unwrap_or(0.0)
    };
    for (i, r) in report.replicas.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line = report.samples.iter().filter_map(|s| {
            let v = s.replica_inflight.get(i).copied().flatten()?;
            Some((secs(s.t_ms), v as f64))
        });
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(&r.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        let mark = |ms: Option<u64>| ms.map(|ms| (secs(ms), at(i, ms)));
        if let Some(pt) = mark(r.added_ms.filter(|&t| t > 0)) {
            chart.draw_series(std::iter::once(TriangleMarker::new(pt, 7, color.filled())))?;
        }
        if let Some(pt) = mark(r.drain_ms) {
            chart.draw_series(std::iter::once(Circle::new(pt, 6, color.filled())))?;
        }
        if let Some(pt) = mark(r.removed_ms) {
            chart.draw_series(std::iter::once(Circle::new(pt, 6, color.stroke_width(2))))?;
        }
        if let Some(ms) = r.drain_ms.zip(r.drain_duration_ms).map(|(d, t)| d + t) {
            chart.draw_series(std::iter::once(
                EmptyElement::at((secs(ms), 0.0))
                    + Rectangle::new([(-4, -4), (4, 4)], color.filled()),
            ))?;
        }
        if let Some(ms) = r.exited_ms {
            chart.draw_series(std::iter::once(Cross::new(
                (secs(ms), 0.0),
                7,
                color.stroke_width(3),
            )))?;
        }
    }
    // The markers' legend, in black.
    let none = || std::iter::empty::<Circle<(f64, f64), i32>>();
    chart
        .draw_series(none())?
        .label("added to the endpoints (ready)")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
    chart
        .draw_series(none())?
        .label(match report.plan.supervisor {
            true => "drain started (SIGTERM)",
            false => "drain started (preStop)",
        })
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
    chart
        .draw_series(none())?
        .label("removed from the endpoints")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.stroke_width(2)));
    chart
        .draw_series(none())?
        .label("drained (drainpipe_drain_duration_ms)")
        .legend(|(x, y)| Rectangle::new([(x + 6, y - 4), (x + 14, y + 4)], BLACK.filled()));
    chart
        .draw_series(none())?
        .label("exited")
        .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    root.present()?;
    Ok(())
}
