//! PNG plots of a run's scalar log (`metrics.jsonl`), for a user without Prometheus or
//! Grafana: `plots/losses.png` (every loss term and the Wasserstein estimate, by network) and
//! `plots/grad_norms.png` (global norms before and after clipping and per-layer norms, by
//! network, on a log scale). Text is drawn with the DejaVu Sans font built into the binary.

use crate::net::Net;
use crate::scalar_log::{self as log, LOSS_TERMS};
use crate::sink::{RunEnd, Sink};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 420;

/// One curve: its legend and its (step, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart of a figure.
struct Panel {
    title: String,
    series: Vec<Series>,
    log_y: bool,
}

/// The plots as a reader of the run: written at its clean end (rank 0), from the scalar log.
/// A failure here must not fail a finished run: it is logged as a warning.
pub struct Plots {
    pub run_dir: PathBuf,
}

impl Sink for Plots {
    fn finish(&mut self, _end: &RunEnd) -> Result<()> {
        match write_run_plots(&self.run_dir) {
            Ok(files) => tracing::info!("plots: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")),
            Err(e) => tracing::warn!("cannot write plots: {e:#}"),
        }
        Ok(())
    }
}

/// Writes both plots of a run into `<run_dir>/plots/` and returns their paths.
pub fn write_run_plots(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let file = run_dir.join(log::FILE_NAME);
    let records = log::read(&file)?;
    if records.is_empty() {
        bail!("{} holds no records: nothing to plot", file.display());
    }
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let loss_panels = Net::ALL
        .iter()
        .map(|&net| {
            let mut series: Vec<Series> = LOSS_TERMS.iter().filter(|t| t.net == net).filter_map(|t| series(&records, t.key, t.term.label())).collect();
            if net == Net::Critic {
                series.extend(self::series(&records, log::WASSERSTEIN, "Wasserstein estimate"));
            }
            Panel { title: format!("{} losses", net.as_str()), series, log_y: false }
        })
        .collect::<Vec<_>>();
    let norm_panels = Net::ALL
        .iter()
        .map(|&net| {
            let mut series: Vec<Series> = [(log::grad_norm(net), "global, before clipping"), (log::grad_norm_clipped(net), "global, after clipping")]
                .iter()
                .filter_map(|(k, n)| self::series(&records, k, n))
                .collect();
            let prefix = log::layer_norm_prefix(net);
            for key in keys_with_prefix(&records, &prefix) {
                series.extend(self::series(&records, &key, &format!("layer {}", &key[prefix.len()..])));
            }
            if net == Net::Critic {
                series.extend(self::series(&records, log::GP_GRAD_NORM, "input gradient at interpolates"));
            }
            Panel { title: format!("{} gradient L2 norms", net.as_str()), series, log_y: true }
        })
        .collect::<Vec<_>>();

    let out = vec![dir.join("losses.png"), dir.join("grad_norms.png")];
    draw(&out[0], &loss_panels)?;
    draw(&out[1], &norm_panels)?;
    Ok(out)
}

/// The finite values of `key` against the record's `step`, if any.
fn series(records: &[Map<String, Value>], key: &str, name: &str) -> Option<Series> {
    let points: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| Some((log::number(r, log::STEP)?, log::number(r, key)?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    (!points.is_empty()).then(|| Series { name: name.to_string(), points })
}

/// Keys starting with `prefix`, in order of first appearance.
fn keys_with_prefix(records: &[Map<String, Value>], prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for k in records.iter().flat_map(|r| r.keys()) {
        if k.starts_with(prefix) && !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys
}

/// Registers DejaVu Sans, built into the binary, as plotters' "sans-serif" (once).
pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the dejavu crate.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws the panels one above the other into an RGB buffer and writes it as a PNG, atomically.
fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    register_font();
    let (w, h) = (WIDTH, PANEL_HEIGHT * panels.len().max(1) as u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        for (area, panel) in root.split_evenly((panels.len().max(1), 1)).iter().zip(panels) {
            draw_panel(area, panel).with_context(|| format!("drawing {} in {}", panel.title, path.display()))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("plot buffer size")?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).context("encoding PNG")?;
    crate::fsutil::write_atomic(path, &png)
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, p: &Panel) -> Result<()> {
    let all = p.series.iter().flat_map(|s| s.points.iter()).filter(|(_, y)| !p.log_y || *y > 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, if p.log_y { 0.1 } else { 0.0 }, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if p.log_y {
        (y0, y1) = (y0 / 1.5, y1 * 1.5);
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-6 * y1.abs().max(1.0));
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    let mut chart = ChartBuilder::on(area);
    chart.caption(&p.title, ("sans-serif", 22)).margin(12).x_label_area_size(36).y_label_area_size(70);
    let err = |e: &dyn std::fmt::Display| anyhow!("{e}");
    macro_rules! finish {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh().x_desc("generator step").label_style(("sans-serif", 14)).draw().map_err(|e| err(&e))?;
            for (i, s) in p.series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let pts = s.points.iter().copied().filter(|(_, y)| !p.log_y || *y > 0.0);
                ctx.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3)));
            }
            if !p.series.is_empty() {
                ctx.configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }};
    }
    if p.log_y {
        finish!(chart.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(|e| err(&e))?);
    } else {
        finish!(chart.build_cartesian_2d(x0..x1, y0..y1).map_err(|e| err(&e))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_log(dir: &Path, n: u64) {
        let mut text = String::new();
        for step in 1..=n {
            let s = step as f64;
            let r = json!({
                "step": step, "d_loss": 9.0 - s * 0.1, "d_adv": -0.1 * s, "d_gp": 0.9, "g_loss": 0.02 * s, "g_adv": 0.02 * s,
                "wasserstein": 0.01 * s, "gp_grad_norm": 0.3, "d_grad_norm": 2.0 + s, "d_grad_norm_clipped": 2.0,
                "g_grad_norm": 0.02, "g_grad_norm_clipped": 0.02, "d_grad_norm.conv1": 1.0, "d_grad_norm.fc": 0.5 * s,
                "g_grad_norm.fc": 0.01, "g_grad_norm.deconv3": 0.0
            });
            text.push_str(&format!("{r}\n"));
        }
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    }

    /// Pixels that are neither white nor gray: plotted curves (the palette has no grays).
    fn colored(img: &image::RgbImage) -> usize {
        img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60).count()
    }

    #[test]
    fn writes_decodable_pngs_with_curves_and_text() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 20);
        let files = write_run_plots(dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join("plots/losses.png"), dir.path().join("plots/grad_norms.png")]);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
            let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!((img.width(), img.height()), (WIDTH, 2 * PANEL_HEIGHT));
            assert!(colored(&img) > 2000, "{}: curves drawn ({} colored pixels)", f.display(), colored(&img));
            // Captions: dark pixels in the title strip at the top of the first panel.
            let dark = (0..30).flat_map(|y| (0..WIDTH).map(move |x| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0[0] < 100).count();
            assert!(dark > 100, "{}: caption text drawn ({dark} dark pixels)", f.display());
        }
    }

    #[test]
    fn series_skip_missing_and_non_finite_values() {
        let recs: Vec<Map<String, Value>> = [json!({"step": 1, "a": 1.0}), json!({"step": 2}), json!({"step": 3, "a": null}), json!({"step": 4, "a": 2.5})]
            .into_iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect();
        assert_eq!(series(&recs, "a", "a").unwrap().points, vec![(1.0, 1.0), (4.0, 2.5)]);
        assert!(series(&recs, "b", "b").is_none());
    }

    #[test]
    fn empty_or_missing_log_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", write_run_plots(dir.path()).unwrap_err());
        assert!(e.contains("metrics.jsonl"), "{e}");
        std::fs::write(dir.path().join("metrics.jsonl"), "").unwrap();
        let e = format!("{:#}", write_run_plots(dir.path()).unwrap_err());
        assert!(e.contains("no records"), "{e}");
        // A single record still plots (degenerate ranges are widened).
        write_log(dir.path(), 1);
        write_run_plots(dir.path()).unwrap();
    }
}
