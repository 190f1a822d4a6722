//! The chart of hit latencies, `benches/hit_latency.svg` (full runs only).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::hits::{HitFigures, Sys};
use crate::stats::{ns, percentile};

pub(crate) fn write_svg(figures: &HashMap<(usize, Sys), HitFigures>, path: &std::path::Path) -> std::io::Result<()> {
    let (w, h) = (900.0, 380.0);
    let (pw, ph) = (380.0, 260.0);
    let series = [
        (Sys::Pool, "#d62728", "warmpool get_or_create"),
        (Sys::Floor, "#1f77b4", "floor: ractor 2-hop"),
        (Sys::Moka, "#2ca02c", "moka get_with"),
    ];
    let (lo, hi) = (50f64.log10(), 1e6f64.log10()); // 50 ns .. 1 ms
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Hit latency by percentile, 1,000 warm keys, 2-core machine (both axes log: y in nines)</text>"#,
        w / 2.0
    );
    for (panel, callers) in [1usize, 64].into_iter().enumerate() {
        let x0 = 60.0 + panel as f64 * (pw + 70.0);
        let y0 = 40.0;
        let xs = |v: f64| x0 + (v.max(1.0).log10() - lo) / (hi - lo) * pw;
        // y in "nines": p0 at the bottom, p90 a third up, p99 two thirds, p99.9 at the top.
        let ys = |q: f64| y0 + ph - (-(1.0 - q).max(1e-3).log10()) / 3.0 * ph;
        let _ = writeln!(
            svg,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{callers} caller{}</text>"#,
            x0 + pw / 2.0,
            y0 - 6.0,
            if callers == 1 { "" } else { "s" }
        );
        for (v, label) in [
            (100.0, "100 ns"),
            (1e3, "1 us"),
            (1e4, "10 us"),
            (1e5, "100 us"),
            (1e6, "1 ms"),
        ] {
            let x = xs(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                y0 + ph,
                y0 + ph + 14.0
            );
        }
        for (q, label) in [(0.0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")] {
            let y = ys(q);
            let _ = writeln!(
                svg,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                x0 + pw,
                x0 - 4.0,
                y + 4.0
            );
        }
        for (i, (sys, color, label)) in series.iter().enumerate() {
            let Some(f) = figures.get(&(callers, *sys)) else {
                continue;
            };
            let mut pts = String::new();
            for step in 0..=600 {
                let q = 1.0 - 10f64.powf(-(step as f64) / 200.0);
                let v = percentile(&f.all, (q * 100.0).max(0.01)) as f64;
                let _ = write!(pts, "{:.1},{:.1} ", xs(v), ys(q));
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>"#
            );
            let p50 = percentile(&f.all, 50.0) as f64;
            let p99 = percentile(&f.all, 99.0) as f64;
            let ly = y0 + ph + 32.0 + i as f64 * 14.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{x0}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{ly:.1}">{label}: p50 {}, p99 {}</text>"#,
                ly - 4.0,
                x0 + 18.0,
                ly - 4.0,
                x0 + 24.0,
                ns(p50),
                ns(p99)
            );
        }
    }
    let _ = writeln!(svg, "</svg>");
    std::fs::write(path, svg)
}
