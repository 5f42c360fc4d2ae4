//! `gandist ablate DIR`: trains every configuration in a folder for its fixed budget (its
//! `train.iterations`), then writes a markdown report (a table of final losses, pre-clip
//! gradient-norm statistics, health counts and divergence) and one PNG per group of
//! configurations (the file-name prefix before the first '-') with the gradient-norm
//! trajectories of the critic and the generator. With an MNIST classifier at hand it also scores
//! each run's newest checkpoint (classifier FID and class coverage).

use crate::config::{Backend, Config};
use crate::model::Net;
use crate::scalar_log::{self as log, number};
use crate::train::{self, RunOptions};
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct AblateOptions {
    pub dir: PathBuf,
    pub runs_dir: PathBuf,
    pub out: PathBuf,
    pub data_dir: PathBuf,
    pub overrides: Vec<String>,
    /// Rebuild the report from existing run directories without training.
    pub report_only: bool,
    /// The command line, recorded in the report.
    pub command: String,
    /// The MNIST classifier that scores each run's newest checkpoint. At the default place a
    /// missing file leaves the quality column empty, with the command that makes one; a file
    /// named with `--classifier` (`classifier_given`) must exist. A file that does not load is
    /// an error either way, before any training.
    pub classifier: PathBuf,
    pub classifier_given: bool,
    /// Samples per quality score.
    pub eval_n: usize,
}

/// Sample quality of a run's newest checkpoint.
#[derive(Debug, Clone)]
pub enum Quality {
    Scored { step: u64, fid: f64, classes_covered: usize },
    /// Why there is no score (no classifier, no checkpoint, ...).
    Missing(String),
}

/// One configuration's outcome, from its scalar log.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub name: String,
    pub description: String,
    pub iterations: u64,
    pub seconds: f64,
    pub final_d_loss: f64,
    pub final_g_loss: f64,
    pub d_norms: Vec<f64>,
    pub g_norms: Vec<f64>,
    pub nonfinite_updates: u64,
    pub g_vanishing_updates: u64,
    pub d_vanishing_updates: u64,
    pub d_exploding_updates: u64,
    pub g_exploding_updates: u64,
    pub explode_threshold: f64,
    pub error: Option<String>,
    pub quality: Quality,
}

impl RunSummary {
    /// Non-finite values or a norm over the health detector's explosion threshold.
    pub fn diverged(&self) -> bool {
        let blown = self.d_norms.iter().chain(&self.g_norms).any(|&n| !n.is_finite() || n > self.explode_threshold);
        self.nonfinite_updates > 0 || blown || !self.final_d_loss.is_finite() || !self.final_g_loss.is_finite()
    }
}

/// The `.toml` files of `dir`, sorted by name.
pub fn configs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read ablation folder {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("ablation folder {} holds no .toml configurations", dir.display());
    }
    Ok(v)
}

/// The leading comment lines of a config file, joined: its description in the report.
pub fn description(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .map(|l| l.trim_start().trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(opts: &AblateOptions) -> Result<Vec<RunSummary>> {
    let configs = configs_in(&opts.dir)?;
    // The classifier for the quality column, checked before any training: one named with
    // --classifier must be there; at the default place a missing file leaves the column empty.
    let evaluator = match opts.classifier_given {
        true => Some(crate::eval::Evaluator::load(&opts.classifier, tch::Device::Cpu)?),
        false => crate::eval::Evaluator::load_if_present(&opts.classifier, tch::Device::Cpu)?,
    };
    // Validate every configuration before spending time on training.
    let mut loaded = Vec::new();
    for p in &configs {
        let mut cfg = Config::load(p, &opts.overrides)?;
        cfg.dist.backend = Backend::Local;
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let name = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        loaded.push((name, description(&text), cfg));
    }
    let mut out = Vec::new();
    for (name, desc, cfg) in loaded {
        let run_dir = opts.runs_dir.join(&name);
        let mut seconds = f64::NAN;
        let mut error = None;
        if !opts.report_only {
            if run_dir.exists() {
                if !run_dir.join("config.toml").exists() {
                    bail!("{} exists and is not a run directory (no config.toml): remove it or choose another --runs-dir", run_dir.display());
                }
                std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove the previous run {}", run_dir.display()))?;
            }
            tracing::info!("ablate: training {name} ({} iterations)", cfg.train.iterations);
            let start = Instant::now();
            let ro = RunOptions { run_dir: run_dir.clone(), data_dir: opts.data_dir.clone(), resume: None };
            match train::run(cfg.clone(), &ro) {
                Ok(train::Outcome::Finished) => {}
                // A signal asks the whole ablation to stop, not just this run.
                Ok(train::Outcome::Stopped(sig)) => bail!("ablation stopped by signal {sig} during {name}"),
                Err(e) => {
                    tracing::error!("ablate: {name} failed: {e:#}");
                    error = Some(format!("{e:#}"));
                }
            }
            seconds = start.elapsed().as_secs_f64();
        }
        let mut s = summarize(&name, &desc, &cfg, &run_dir.join("metrics.jsonl"))?;
        s.seconds = if opts.report_only { s.seconds } else { seconds };
        s.error = error.or(s.error);
        out.push(s);
    }
    score(opts, evaluator.as_ref(), &mut out);
    write_report(opts, &out)?;
    Ok(out)
}

fn num(r: &Map<String, Value>, k: &str) -> f64 {
    number(r, k).unwrap_or(f64::NAN)
}

fn count(r: &Map<String, Value>, k: &str) -> u64 {
    r.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
}

/// Reads a run's scalar log. A missing norm (a skipped, non-finite update) reads as NaN.
pub fn summarize(name: &str, desc: &str, cfg: &Config, log_file: &Path) -> Result<RunSummary> {
    let records = if log_file.exists() { log::read(log_file)? } else { Vec::new() };
    let last = records.last().cloned().unwrap_or_default();
    let norms = |net: Net| records.iter().map(|r| num(r, &log::grad_norm(net))).collect();
    Ok(RunSummary {
        name: name.to_string(),
        description: desc.to_string(),
        iterations: count(&last, log::STEP),
        seconds: num(&last, log::ELAPSED_SECONDS),
        final_d_loss: num(&last, log::D_LOSS.key),
        final_g_loss: num(&last, log::G_LOSS.key),
        d_norms: norms(Net::Critic),
        g_norms: norms(Net::Generator),
        nonfinite_updates: count(&last, log::SKIPPED_UPDATES),
        g_vanishing_updates: count(&last, &log::vanishing_updates(Net::Generator)),
        d_vanishing_updates: count(&last, &log::vanishing_updates(Net::Critic)),
        d_exploding_updates: count(&last, &log::exploding_updates(Net::Critic)),
        g_exploding_updates: count(&last, &log::exploding_updates(Net::Generator)),
        explode_threshold: cfg.health.explode_threshold,
        error: if records.is_empty() { Some(format!("no scalar log at {}", log_file.display())) } else { None },
        quality: Quality::Missing("not scored".into()),
    })
}

/// Scores every run's newest checkpoint with the classifier, using the run's own seed for the
/// evaluation noise (so `gandist eval --checkpoint RUN --seed SEED` reproduces each value).
/// Quality is an addition to the report: a missing classifier or checkpoint is written into the
/// table instead of failing the ablation.
fn score(opts: &AblateOptions, evaluator: Option<&crate::eval::Evaluator>, runs: &mut [RunSummary]) {
    use crate::eval;
    use crate::train::snapshot::{load_generator, GeneratorWeights};
    let Some(evaluator) = evaluator else {
        let why = format!("n/a: no classifier at {} (`gandist classifier train`)", opts.classifier.display());
        runs.iter_mut().for_each(|r| r.quality = Quality::Missing(why.clone()));
        return;
    };
    for r in runs.iter_mut() {
        let run_dir = opts.runs_dir.join(&r.name);
        r.quality = match load_generator(&run_dir, GeneratorWeights::Auto, tch::Device::Cpu) {
            Err(_) => Quality::Missing("n/a: no usable checkpoint".into()),
            Ok(ck) => {
                let seed = Config::from_toml_str(&ck.meta.config, &[]).map(|c| c.train.seed).unwrap_or(0);
                let images = eval::generate(&ck.generator, opts.eval_n, seed);
                match evaluator.evaluate(&images) {
                    Ok(rep) => Quality::Scored { step: ck.meta.step, fid: rep.fid, classes_covered: rep.classes_covered },
                    Err(e) => Quality::Missing(format!("n/a: {e:#}")),
                }
            }
        };
    }
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quality::Scored { step, fid, classes_covered } => write!(f, "{fid:.1} / {classes_covered} (step {step})"),
            Quality::Missing(why) => f.write_str(why),
        }
    }
}

/// Median and maximum of the finite values (NaN when there are none).
pub fn median_max(v: &[f64]) -> (f64, f64) {
    let mut f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    f.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = f.len();
    let med = if n % 2 == 1 { f[n / 2] } else { 0.5 * (f[n / 2 - 1] + f[n / 2]) };
    (med, f[n - 1])
}

fn group_of(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

/// Line colours of a group's runs, in order; the report names them.
const COLOURS: [(&str, (u8, u8, u8)); 6] = [
    ("blue", (31, 119, 180)),
    ("orange", (255, 127, 14)),
    ("green", (44, 160, 44)),
    ("red", (214, 39, 40)),
    ("purple", (148, 103, 189)),
    ("brown", (140, 86, 75)),
];

fn g3(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x != 0.0 && (x.abs() >= 1e4 || x.abs() < 1e-3) {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

fn write_report(opts: &AblateOptions, runs: &[RunSummary]) -> Result<()> {
    let out_dir = opts.out.parent().map(Path::to_path_buf).unwrap_or_default();
    let stem = opts.out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "ablation".into());
    let img_dir = out_dir.join(&stem);
    std::fs::create_dir_all(&img_dir).with_context(|| format!("cannot create {}", img_dir.display()))?;
    let mut groups: BTreeMap<&str, Vec<&RunSummary>> = BTreeMap::new();
    for r in runs {
        groups.entry(group_of(&r.name)).or_default().push(r);
    }
    let mut md = String::new();
    writeln!(md, "# Ablation of the stabilisation techniques\n")?;
    writeln!(md, "Generated by `gandist ablate` (src/ablation.rs). Command:\n\n```sh\n{}\n```\n", opts.command)?;
    writeln!(md, "Machine: {}. Date (UTC): {}.\n", machine(), utc_now())?;
    writeln!(
        md,
        "Each configuration in `{}` trains on real MNIST for its own fixed budget (`train.iterations`) on CPU. \
Gradient norms are the global L2 norms **before clipping**, of the last critic update and of the generator \
update of every iteration (`d_grad_norm`, `g_grad_norm` in each run's metrics.jsonl). *Diverged* means a \
non-finite gradient or loss, or a norm above the health detector's explosion threshold \
(`health.explode_threshold`). *G vanishing* counts generator updates that the gradient-health detector \
classed as vanishing (norm under `health.vanish_threshold` for `health.vanish_patience` updates in a row). *FID / classes covered* scores the newest checkpoint of each run (EMA weights when \
the run keeps them) on {} samples drawn with the run's seed: the classifier FID against the MNIST test set \
and the digit classes holding at least 1% of the samples (docs/evaluation.md; classifier `{}`). \
These are short runs: the scores compare techniques at equal budgets, not converged quality.\n",
        opts.dir.display(),
        opts.eval_n,
        opts.classifier.display()
    )?;
    writeln!(md, "| run | technique | iterations | seconds | final D loss | final G loss | \\|∇D\\| median | \\|∇D\\| max | \\|∇G\\| median | \\|∇G\\| max | G vanishing updates | non-finite updates | diverged | FID / classes covered |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in runs {
        let (dm, dx) = median_max(&r.d_norms);
        let (gm, gx) = median_max(&r.g_norms);
        let div = match &r.error {
            Some(e) => format!("run failed: {}", e.replace('|', "/")),
            None if r.diverged() => "**yes**".into(),
            None => "no".into(),
        };
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.description.replace('|', "/"),
            r.iterations,
            r.seconds,
            g3(r.final_d_loss),
            g3(r.final_g_loss),
            g3(dm),
            g3(dx),
            g3(gm),
            g3(gx),
            r.g_vanishing_updates,
            r.nonfinite_updates,
            div,
            r.quality.to_string().replace('|', "/")
        )?;
    }
    writeln!(md, "\n## Gradient-norm trajectories\n")?;
    writeln!(
        md,
        "One image per group (the file-name prefix). Top panel: the critic; bottom panel: the generator. \
x: generator step (0 to the run's iterations, linear); y: log10 of the pre-clip gradient norm, clamped to \
[-8, 8] (the horizontal grid lines are at every integer power of ten). A non-finite norm is drawn as a \
mark at the top edge.\n"
    )?;
    for (g, members) in &groups {
        let file = img_dir.join(format!("{g}.png"));
        plot_group(&file, members)?;
        let rel = format!("{stem}/{g}.png");
        let legend: Vec<String> = members.iter().zip(COLOURS.iter().cycle()).map(|(r, (c, _))| format!("{c}: `{}`", r.name)).collect();
        writeln!(md, "### Group {g}\n\n![{g}]({rel})\n\n{}\n", legend.join(", "))?;
        for r in members {
            let verdict = if r.diverged() { "diverged" } else { "did not diverge" };
            writeln!(
                md,
                "- `{}` {verdict}; generator updates classed vanishing: {} of {}; critic exploding: {}, generator exploding: {}, non-finite updates: {}.",
                r.name, r.g_vanishing_updates, r.iterations, r.d_exploding_updates, r.g_exploding_updates, r.nonfinite_updates
            )?;
        }
        writeln!(md)?;
    }
    crate::fsutil::write_atomic(&opts.out, md.as_bytes()).with_context(|| format!("cannot write {}", opts.out.display()))?;
    tracing::info!("ablate: wrote {} and {}", opts.out.display(), img_dir.display());
    Ok(())
}

fn plot_group(file: &Path, runs: &[&RunSummary]) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::register_font();
    let root = BitMapBackend::new(file, (900, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("plot {}: {e}", file.display()))?;
    let panels = root.split_evenly((2, 1));
    let xmax = runs.iter().map(|r| r.d_norms.len().max(r.g_norms.len())).max().unwrap_or(1).max(2) as f64;
    for (panel, (title, pick)) in panels.iter().zip([
        ("critic |grad| (log10)", (|r: &RunSummary| &r.d_norms) as fn(&RunSummary) -> &Vec<f64>),
        ("generator |grad| (log10)", |r: &RunSummary| &r.g_norms),
    ]) {
        let mut b = ChartBuilder::on(panel);
        b.margin(10).x_label_area_size(30).y_label_area_size(45).caption(title, ("sans-serif", 18));
        let mut chart = b.build_cartesian_2d(0f64..xmax, -8f64..8f64).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let mut mesh = chart.configure_mesh();
        mesh.y_labels(17).x_labels(10).light_line_style(WHITE);
        mesh.draw().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        for (r, (_, (cr, cg, cb))) in runs.iter().zip(COLOURS.iter().cycle()) {
            let colour = RGBColor(*cr, *cg, *cb);
            let pts: Vec<(f64, f64)> = pick(r)
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_finite() && **n > 0.0)
                .map(|(i, n)| ((i + 1) as f64, n.log10().clamp(-8.0, 8.0)))
                .collect();
            chart.draw_series(LineSeries::new(pts, colour.stroke_width(2))).map_err(|e| anyhow::anyhow!("plot: {e}"))?;
            let bad: Vec<(f64, f64)> = pick(r).iter().enumerate().filter(|(_, n)| !n.is_finite()).map(|(i, _)| ((i + 1) as f64, 7.8)).collect();
            chart
                .draw_series(bad.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("cannot write plot {}: {e}", file.display()))?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} cores visible, {} {}, libtorch {} (CPU)", std::env::consts::OS, std::env::consts::ARCH, crate::LIBTORCH_VERSION)
}

/// The current UTC time as `YYYY-MM-DD HH:MM`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM` (Howard Hinnant's civil-from-days).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, (rem % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_and_divergence() {
        assert_eq!(median_max(&[3.0, f64::NAN, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 4.0));
        assert!(median_max(&[f64::NAN]).0.is_nan());
        let mut r = RunSummary {
            name: "c-x".into(),
            description: String::new(),
            iterations: 3,
            seconds: 1.0,
            final_d_loss: 0.1,
            final_g_loss: 0.2,
            d_norms: vec![1.0, 2.0],
            g_norms: vec![1.0, 5.0],
            nonfinite_updates: 0,
            g_vanishing_updates: 0,
            d_vanishing_updates: 0,
            d_exploding_updates: 0,
            g_exploding_updates: 0,
            explode_threshold: 10.0,
            error: None,
            quality: Quality::Missing("n/a".into()),
        };
        assert!(!r.diverged());
        r.g_norms.push(11.0);
        assert!(r.diverged());
        r.g_norms.pop();
        r.d_norms.push(f64::NAN);
        assert!(r.diverged());
        assert_eq!(group_of("c-wgan-gp"), "c");
    }

    #[test]
    fn description_and_dates() {
        assert_eq!(description("# (a) minimax\n# strong critic\n[model]\n# not this\n"), "(a) minimax strong critic");
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        // 2026-11-26 07:30 UTC.
        assert_eq!(format_utc(1_795_678_200), "2026-11-26 07:30");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
    }
}
