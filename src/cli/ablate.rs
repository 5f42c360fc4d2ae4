//! `gandist ablate`: train every configuration of a folder and write the report.

use crate::data::mnist;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Folder of .toml configurations (grouped in the report by the name before the first '-').
    dir: PathBuf,
    /// Where the run directories go (each one is replaced).
    #[arg(long, default_value = "runs/ablation")]
    runs_dir: PathBuf,
    /// The markdown report; plots go to a folder named after it (docs/ablation/).
    #[arg(long, default_value = "docs/ablation.md")]
    out: PathBuf,
    /// MNIST folder (default: data/mnist).
    #[arg(long, env = "GANDIST_DATA")]
    data: Option<PathBuf>,
    /// Override a value in every configuration (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Rebuild the report from the existing run directories, without training.
    #[arg(long)]
    report_only: bool,
    /// The MNIST classifier that scores each run (default: classifier.safetensors in the MNIST folder).
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// Samples per quality score.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(2..))]
    eval_n: u64,
}

pub fn run(a: Args) -> Result<ExitCode> {
    // The program name as users type it, not the path of this binary.
    let args = std::env::args().skip(1).map(|a| if a.contains(' ') { format!("{a:?}") } else { a });
    let command = std::iter::once("gandist".to_string()).chain(args).collect::<Vec<_>>().join(" ");
    let data_dir = mnist::resolve_dir(a.data.as_deref());
    let classifier_given = a.classifier.is_some();
    let classifier = crate::eval::classifier::resolve_path(a.classifier.as_deref(), &data_dir);
    let opts = crate::ablation::AblateOptions {
        dir: a.dir,
        runs_dir: a.runs_dir,
        out: a.out,
        data_dir,
        overrides: a.overrides,
        report_only: a.report_only,
        command,
        classifier,
        classifier_given,
        eval_n: a.eval_n as usize,
    };
    let runs = crate::ablation::run(&opts)?;
    let failed = runs.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} ablation runs failed (see {})", runs.len(), opts.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
