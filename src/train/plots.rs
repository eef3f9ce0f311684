//! Pictures for `glassgrad compare`: overlaid curves (one per method) and grouped bars (one group
//! per method, one bar per category), as SVG text drawn with plotters.

use plotters::prelude::*;

use crate::error::{Error, Result};

const COLORS: [RGBColor; 8] =
    [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(255, 140, 0), RGBColor(128, 0, 128)];

fn plot_err(e: &dyn std::fmt::Display) -> Error {
    Error::Input(format!("cannot draw the picture: {e}"))
}

/// One line per named series of (x, y) points, with a legend.
pub fn curves_svg(
    series: &[(String, Vec<(f64, f64)>)],
    title: &str,
    y_desc: &str,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let points = series.iter().flat_map(|(_, p)| p.iter()).filter(|p| p.1.is_finite());
        let (mut x_hi, mut lo, mut hi) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            (x_hi, lo, hi) = (x_hi.max(x), lo.min(y), hi.max(y));
        }
        let (lo, hi) = if lo.is_finite() { (lo, hi.max(lo + 1e-3)) } else { (0.0, 1.0) };
        let pad = 0.05 * (hi - lo);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_hi, (lo - pad)..(hi + pad))
            .map_err(|e| plot_err(&e))?;
        chart.configure_mesh().x_desc("step").y_desc(y_desc).draw().map_err(|e| plot_err(&e))?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| plot_err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(svg)
}

/// Grouped bars: for each group (a method), one bar per category, heights `values[group][cat]`.
pub fn bars_svg(
    groups: &[String],
    categories: &[&str],
    values: &[Vec<f64>],
    title: &str,
    y_desc: &str,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let hi = values.iter().flatten().fold(0f64, |m, v| m.max(*v)).max(1e-9) * 1.1;
        let n = groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..hi)
            .map_err(|e| plot_err(&e))?;
        let names = groups.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (*x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_desc)
            .draw()
            .map_err(|e| plot_err(&e))?;
        let width = 0.8 / categories.len().max(1) as f64;
        for (c, cat) in categories.iter().enumerate() {
            let color = COLORS[c % COLORS.len()];
            let bars = values.iter().enumerate().map(|(g, v)| {
                let x0 = g as f64 + 0.1 + c as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, v[c])], color.filled())
            });
            chart.draw_series(bars).map_err(|e| plot_err(&e))?.label(*cat).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(svg)
}
