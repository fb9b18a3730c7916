//! The loss-curve PNG: training loss (blue) and validation loss (red) against the step.
//!
//! Plotters' text needs a system font; to draw labels without one, tick values and the legend use
//! a built-in 3×5 pixel font (digits and the few letters needed), scaled ×2.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// 3×5 glyphs, one row per 3 bits (most significant bit on the left), rows top to bottom.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        'a' => [0, 3, 5, 5, 3],
        'i' => [2, 0, 2, 2, 2],
        'l' => [2, 2, 2, 2, 3],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 2, 5, 5, 2],
        'p' => [0, 6, 5, 6, 4],
        'r' => [0, 3, 4, 4, 4],
        's' => [0, 3, 6, 1, 6],
        't' => [2, 7, 2, 2, 3],
        'v' => [0, 5, 5, 5, 2],
        'k' => [4, 5, 6, 5, 5],
        _ => [0; 5],
    }
}

const SCALE: i32 = 2;

/// Pixel width of `s` in the built-in font.
fn text_width(s: &str) -> i32 {
    s.chars().count() as i32 * 4 * SCALE
}

fn draw_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &str,
    x: i32,
    y: i32,
    color: &RGBColor,
) -> Result<()> {
    for (i, c) in s.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    let px = x + (i as i32 * 4 + col) * SCALE;
                    let py = y + row as i32 * SCALE;
                    area.draw(&Rectangle::new([(px, py), (px + SCALE - 1, py + SCALE - 1)], color.filled()))
                        .map_err(|e| Error::Config(format!("plot: {e}")))?;
                }
            }
        }
    }
    Ok(())
}

/// A short decimal for a tick value.
fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let k = v / 1000.0;
        if (k - k.round()).abs() < 1e-9 {
            format!("{}k", k.round())
        } else {
            format!("{k:.1}k")
        }
    } else if a >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "Nice" tick step (1, 2 or 5 × 10^k) giving about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    }
}

/// Reads `metrics.jsonl` and draws `png`.
pub fn plot_losses(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(Error::io(metrics))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(step) = v.get("step").and_then(|s| s.as_f64()) else { continue };
        if let Some(l) = v.get("train_loss").and_then(|x| x.as_f64()).filter(|x| x.is_finite()) {
            train.push((step, l));
        }
        if let Some(l) = v.get("val_loss").and_then(|x| x.as_f64()).filter(|x| x.is_finite()) {
            val.push((step, l));
        }
    }
    if train.is_empty() && val.is_empty() {
        return Err(Error::format(metrics, "no losses to plot"));
    }
    let all = train.iter().chain(&val);
    let (x0, x1) = (0.0, all.clone().map(|p| p.0).fold(1.0, f64::max));
    let ymax = all.clone().map(|p| p.1).fold(f64::MIN, f64::max);
    let ymin = all.map(|p| p.1).fold(f64::MAX, f64::min);
    let pad = ((ymax - ymin) * 0.05).max(1e-3);
    let (y0, y1) = ((ymin - pad).max(0.0), ymax + pad);

    let root = BitMapBackend::new(png, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| Error::Config(format!("plot {}: {e}", png.display()));
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .margin_top(30)
        .margin_right(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let grid = RGBColor(225, 225, 225);
    let axis = RGBColor(60, 60, 60);
    let (xs, ys) = (tick_step(x1 - x0, 8.0), tick_step(y1 - y0, 6.0));
    let mut ticks = Vec::new();
    let mut x = (x0 / xs).ceil() * xs;
    while x <= x1 + 1e-9 {
        chart.draw_series(LineSeries::new([(x, y0), (x, y1)], grid)).map_err(|e| err(&e))?;
        let (px, py) = chart.backend_coord(&(x, y0));
        ticks.push((fmt_tick(x), px - text_width(&fmt_tick(x)) / 2, py + 8));
        x += xs;
    }
    let mut y = (y0 / ys).ceil() * ys;
    while y <= y1 + 1e-9 {
        chart.draw_series(LineSeries::new([(x0, y), (x1, y)], grid)).map_err(|e| err(&e))?;
        let (px, py) = chart.backend_coord(&(x0, y));
        ticks.push((fmt_tick(y), px - 8 - text_width(&fmt_tick(y)), py - 5));
        y += ys;
    }
    chart.draw_series(LineSeries::new([(x0, y0), (x1, y0)], axis)).map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new([(x0, y0), (x0, y1)], axis)).map_err(|e| err(&e))?;
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    chart.draw_series(LineSeries::new(train.iter().copied(), blue.stroke_width(1))).map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(val.iter().copied(), red.stroke_width(2))).map_err(|e| err(&e))?;
    chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, red.filled()))).map_err(|e| err(&e))?;
    drop(chart);
    for (s, px, py) in ticks {
        draw_text(&root, &s, px, py, &axis)?;
    }
    // Legend and axis names.
    root.draw(&Rectangle::new([(80, 10), (100, 12)], blue.filled())).map_err(|e| err(&e))?;
    draw_text(&root, "train loss", 106, 6, &axis)?;
    root.draw(&Rectangle::new([(220, 10), (240, 12)], red.filled())).map_err(|e| err(&e))?;
    draw_text(&root, "val loss", 246, 6, &axis)?;
    draw_text(&root, "step", 900 - 20 - text_width("step"), 560 - 14, &axis)?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_plot_writes_a_png() {
        assert_eq!(tick_step(100.0, 8.0), 10.0);
        assert_eq!(tick_step(3.0, 6.0), 0.5);
        assert_eq!(fmt_tick(2500.0), "2.5k");
        assert_eq!(fmt_tick(0.25), "0.25");
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("metrics.jsonl");
        let mut s = String::from("{\"step\":0,\"val_loss\":6.1}\n");
        for i in 1..=50 {
            s += &format!("{{\"step\":{i},\"train_loss\":{}}}\n", 6.0 - i as f64 * 0.05);
        }
        s += "{\"step\":50,\"train_loss\":3.5,\"val_loss\":3.7}\n";
        std::fs::write(&m, s).expect("write");
        let png = dir.path().join("loss.png");
        plot_losses(&m, &png).expect("plot");
        let bytes = std::fs::read(&png).expect("png written");
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::write(&m, "garbage\n").expect("write");
        assert!(plot_losses(&m, &png).is_err());
    }
}
