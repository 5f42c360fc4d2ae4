//! The `gandist` command line: train, sample, eval, classifier, plot, data, bench, ablate.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use gandist::config::Config;
use gandist::data::mnist;
use gandist::train::{self, Outcome, Resume, RunOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gandist", version, about = "Stable, observable, data-parallel GAN training on MNIST")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GAN (run under mpirun or srun for data-parallel training).
    Train {
        /// The TOML configuration (configs/ has the paper's, a quick CPU one and ablations).
        #[arg(long)]
        config: PathBuf,
        /// Override a config value, e.g. --set optim.lr_d=2e-4 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
        /// MNIST folder (default: data/mnist).
        #[arg(long, env = "GANDIST_DATA")]
        data: Option<PathBuf>,
        /// Run directory (default: runs/<config file name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Continue from a checkpoint directory, or `auto` for the newest usable one in the run directory.
        #[arg(long)]
        resume: Option<String>,
    },
    /// Generate samples from a checkpoint's generator.
    Sample {
        /// A checkpoint directory, or a run directory (its newest checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// A PNG grid, or an IDX file of the images (n, 28, 28) for `eval --samples`.
        #[arg(long, value_enum, default_value_t = SampleFormat::Png)]
        format: SampleFormat,
        /// Seed of the generator's noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Which generator weights: the EMA ones when the checkpoint has them (auto), or not.
        #[arg(long, value_enum, default_value_t = Weights::Auto)]
        weights: Weights,
    },
    /// Train every configuration in a folder for its fixed budget and write a report.
    Ablate {
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
    },
    /// Write PNG plots of a run's losses and gradient norms (from its metrics.jsonl) into RUN_DIR/plots.
    Plot {
        /// The run directory.
        run_dir: PathBuf,
    },
    /// Sample quality of a checkpoint's generator or of an IDX file of samples: classifier-feature
    /// FID against the MNIST test set, class histogram and coverage, confidence.
    Eval {
        /// A checkpoint directory, or a run directory (its newest checkpoint).
        #[arg(long, conflicts_with = "samples", required_unless_present = "samples")]
        checkpoint: Option<PathBuf>,
        /// An IDX file of 28x28 images (n, 28, 28), raw or gzip, instead of a checkpoint.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Samples to generate (default 10000); with --samples, use only the first N.
        #[arg(long)]
        n: Option<usize>,
        /// Seed of the generator's noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// MNIST folder (default: data/mnist).
        #[arg(long, env = "GANDIST_DATA")]
        data: Option<PathBuf>,
        /// Classifier file (default: <MNIST folder>/classifier.safetensors).
        #[arg(long)]
        classifier: Option<PathBuf>,
        /// With --checkpoint, which generator weights: the EMA ones when the run kept them (auto), or not.
        #[arg(long, value_enum, default_value_t = Weights::Auto)]
        weights: Weights,
        /// CPU threads (0 = the cores of this process's affinity mask, as a one-process `train`
        /// with train.threads = 0). Give the run's train.threads to reproduce its logged FID
        /// to the last digit: the thread count changes the summation order.
        #[arg(long, default_value_t = 0)]
        threads: i32,
    },
    /// The MNIST classifier that `eval` uses.
    Classifier {
        #[command(subcommand)]
        action: ClassifierAction,
    },
    /// Fetch or verify the MNIST files.
    Data {
        #[command(subcommand)]
        action: DataAction,
    },
    /// Images/s of the training iteration on synthetic data.
    Bench {
        /// cpu, cuda, cuda:N or auto (train.device).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Global batch (data.batch_size), split among the ranks.
        #[arg(long, default_value_t = 64)]
        batch: i64,
        /// Timed iterations (each n_critic critic updates and one generator update).
        #[arg(long, default_value_t = 20)]
        iters: u64,
        /// Untimed iterations first.
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        /// A config to take the model and loss from (default: the built-in WGAN-GP).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Exercises the collectives of the chosen backend with known values, even on one rank,
    /// and on NCCL the abort path (for launch/gpu-check.sh); non-zero exit on any failure.
    #[command(hide = true)]
    SelftestCollectives {
        /// cpu, cuda, cuda:N or auto (train.device).
        #[arg(long, default_value = "auto")]
        device: String,
        /// Overrides such as dist.backend="nccl" (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        overrides: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DataAction {
    /// Download the four files from the public mirrors, or import them with --from.
    Fetch {
        /// Where the four files go (default: data/mnist).
        #[arg(long, env = "GANDIST_DATA")]
        data: Option<PathBuf>,
        /// Import from this local folder instead of downloading.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Check the SHA-256 of each file's decompressed bytes.
    Verify {
        /// MNIST folder (default: data/mnist).
        #[arg(long, env = "GANDIST_DATA")]
        data: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Weights {
    Auto,
    Ema,
    Raw,
}

impl From<Weights> for gandist::train::snapshot::GeneratorWeights {
    fn from(w: Weights) -> Self {
        match w {
            Weights::Auto => Self::Auto,
            Weights::Ema => Self::Ema,
            Weights::Raw => Self::Raw,
        }
    }
}

#[derive(Subcommand)]
enum ClassifierAction {
    /// Train the LeNet-style classifier on MNIST (seeded) and save it with a checksum.
    Train {
        /// MNIST folder (default: data/mnist).
        #[arg(long, env = "GANDIST_DATA")]
        data: Option<PathBuf>,
        /// Output file (default: <MNIST folder>/classifier.safetensors, where eval looks).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Passes over the training set.
        #[arg(long, default_value_t = 4)]
        epochs: usize,
        /// Seed of the initial weights and the data order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images per update.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Adam's learning rate in the first epoch (halved after each epoch).
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Train on the first N training images only (0 = all); for quick checks.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// CPU threads (0 = libtorch's default).
        #[arg(long, default_value_t = 0)]
        threads: i32,
        /// Refuse to save a classifier below this test accuracy.
        #[arg(long, default_value_t = 0.99)]
        min_accuracy: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SampleFormat {
    Png,
    Idx,
}

fn main() -> ExitCode {
    // A full disk or a file-size limit must surface as a write error with a message, not as
    // SIGXFSZ killing the process mid-checkpoint.
    let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let cli = Cli::parse();
    gandist::logging::init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train { config, overrides, data, run_dir, resume } => {
            let cfg = Config::load(&config, &overrides)?;
            let run_dir = run_dir.unwrap_or_else(|| {
                let stem = config.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
                PathBuf::from("runs").join(stem)
            });
            let resume = resume.map(|r| if r == "auto" { Resume::Auto } else { Resume::Path(PathBuf::from(r)) });
            let opts = RunOptions { run_dir, data_dir: mnist::resolve_dir(data.as_deref()), resume };
            match train::run(cfg, &opts)? {
                Outcome::Finished => Ok(ExitCode::SUCCESS),
                Outcome::Stopped(sig) => Ok(ExitCode::from((128 + sig) as u8)),
            }
        }
        Command::Sample { checkpoint, n, out, format, seed, weights } => {
            sample(&checkpoint, n, &out, format, seed, weights)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ablate { dir, runs_dir, out, data, overrides, report_only, classifier, eval_n } => {
            // The program name as users type it, not the path of this binary.
            let args = std::env::args().skip(1).map(|a| if a.contains(' ') { format!("{a:?}") } else { a });
            let command = std::iter::once("gandist".to_string()).chain(args).collect::<Vec<_>>().join(" ");
            let data_dir = mnist::resolve_dir(data.as_deref());
            let classifier_given = classifier.is_some();
            let classifier = gandist::eval::classifier::resolve_path(classifier.as_deref(), &data_dir);
            let opts = gandist::ablation::AblateOptions {
                dir, runs_dir, out, data_dir, overrides, report_only, command, classifier, classifier_given, eval_n: eval_n as usize,
            };
            let runs = gandist::ablation::run(&opts)?;
            let failed = runs.iter().filter(|r| r.error.is_some()).count();
            if failed > 0 {
                bail!("{failed} of {} ablation runs failed (see {})", runs.len(), opts.out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plot { run_dir } => {
            for f in gandist::plot::write_run_plots(&run_dir)? {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { checkpoint, samples, n, seed, data, classifier, weights, threads } => {
            if threads > 0 {
                tch::set_num_threads(threads);
            } else {
                gandist::cpus::set_threads_alone()?;
            }
            eval(checkpoint.as_deref(), samples.as_deref(), n, seed, data.as_deref(), classifier.as_deref(), weights)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Classifier { action: ClassifierAction::Train { data, out, epochs, seed, batch, lr, limit, threads, min_accuracy } } => {
            use gandist::eval::classifier::{self, Classifier, TrainOptions};
            let dir = mnist::resolve_dir(data.as_deref());
            let out = classifier::resolve_path(out.as_deref(), &dir);
            if threads > 0 {
                tch::set_num_threads(threads);
            }
            let device = gandist::device::select("auto", 0)?;
            let opts = TrainOptions { epochs, batch_size: batch, lr, seed, limit };
            let (net, report) = Classifier::train(&dir, &opts, device)?;
            let acc = report.test_accuracy;
            println!("test accuracy {:.4} ({} training images, {epochs} epochs, {:.1} s)", acc, report.train_images, report.seconds);
            if acc < min_accuracy {
                bail!("test accuracy {acc:.4} is below --min-accuracy {min_accuracy}: not saved (train longer, or lower --min-accuracy for a quick check)");
            }
            let info = [
                ("test_accuracy", format!("{acc}")),
                ("seed", seed.to_string()),
                ("epochs", epochs.to_string()),
                ("train_images", report.train_images.to_string()),
                ("train_seconds", format!("{:.1}", report.seconds)),
            ];
            net.save(&out, &info)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Data { action } => {
            match action {
                DataAction::Fetch { data, from } => {
                    let dir = mnist::resolve_dir(data.as_deref());
                    match from {
                        Some(src) => mnist::import(&src, &dir)?,
                        None => mnist::fetch(&dir)?,
                    }
                    for line in mnist::verify(&dir)? {
                        println!("{line}");
                    }
                }
                DataAction::Verify { data } => {
                    for line in mnist::verify(&mnist::resolve_dir(data.as_deref()))? {
                        println!("{line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { device, batch, iters, warmup, config, overrides } => {
            let mut all = vec![format!("data.batch_size={batch}"), format!("train.device=\"{device}\"")];
            all.extend(overrides);
            let cfg = match config {
                Some(p) => Config::load(&p, &all)?,
                None => Config::from_toml_str("", &all)?,
            };
            let started = gandist::dist::init(&cfg.dist, &cfg.train.device)?;
            gandist::logging::set_rank(started.comm.rank());
            tracing::info!("{}", started.report);
            let (comm, dev): (std::rc::Rc<dyn gandist::dist::Collective>, _) = (std::rc::Rc::from(started.comm), started.device);
            gandist::cpus::set_threads(&cfg, comm.as_ref())?;
            let backend = comm.backend_name();
            let is_root = comm.rank() == 0;
            // An error on one rank ends the whole job, as in training.
            let r = gandist::dist::or_abort(comm.as_ref(), gandist::bench::run(cfg, comm.clone(), dev, warmup, iters))?;
            if is_root {
                println!("{}", r.report(dev, backend));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SelftestCollectives { device, overrides } => {
            let mut all = vec![format!("train.device=\"{device}\"")];
            all.extend(overrides);
            let cfg = Config::from_toml_str("", &all)?;
            let started = gandist::dist::init(&cfg.dist, &cfg.train.device)?;
            gandist::logging::set_rank(started.comm.rank());
            tracing::info!("{}", started.report);
            let checks = gandist::dist::selftest::run(&started);
            let rank = started.comm.rank();
            let mut failed = 0;
            for c in &checks {
                println!("rank {rank} selftest {}: {} ({})", c.name, if c.ok { "ok" } else { "FAILED" }, c.detail);
                failed += !c.ok as usize;
            }
            // Every rank reports before any ends the job.
            started.comm.barrier()?;
            if failed > 0 {
                bail!("{failed} collective self-test check(s) failed on rank {rank}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sample(checkpoint: &Path, n: usize, out: &Path, format: SampleFormat, seed: u64, weights: Weights) -> Result<()> {
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let device = gandist::device::select("auto", 0)?;
    let ck = gandist::train::snapshot::load_generator(checkpoint, weights.into(), device)?;
    gandist::seeds::seed_torch(seed, gandist::seeds::Stream::FixedNoise, 1);
    let z = tch::Tensor::randn([n as i64, ck.config.model.latent], (tch::Kind::Float, tch::Device::Cpu)).to_device(device);
    let bytes = tch::no_grad(|| gandist::model::to_bytes(&ck.generator.forward(&z)));
    let (side, ch) = (mnist::SIDE, ck.generator.channels as usize);
    match format {
        SampleFormat::Png => gandist::samples::write_grid(out, &bytes, n, ch, side)?,
        SampleFormat::Idx => gandist::samples::write_idx_channels(out, &bytes, n, ch, side)?,
    }
    let which = if ck.ema { " (EMA weights)" } else { "" };
    tracing::info!("wrote {n} samples from {}{which} (step {}) on {} to {}", ck.dir.display(), ck.meta.step, gandist::device::label(device), out.display());
    Ok(())
}

fn eval(
    checkpoint: Option<&Path>,
    samples: Option<&Path>,
    n: Option<usize>,
    seed: u64,
    data: Option<&Path>,
    classifier: Option<&Path>,
    weights: Weights,
) -> Result<()> {
    use gandist::eval::{self, classifier as cls, Evaluator};
    if n.is_some_and(|n| n < 2) {
        bail!("--n must be at least 2 (the Frechet distance needs a covariance)");
    }
    let data_dir = mnist::resolve_dir(data);
    let device = gandist::device::select("auto", 0)?;
    // Inputs are checked before the classifier is loaded: their errors come first.
    let (images, source) = match (checkpoint, samples) {
        (Some(c), _) => {
            let ck = gandist::train::snapshot::load_generator(c, weights.into(), device)?;
            let n = n.unwrap_or(10_000);
            let which = if ck.ema { ", EMA weights" } else { "" };
            let on = gandist::device::label(device);
            (eval::generate(&ck.generator, n, seed), format!("{} (step {}{which}), {n} samples, seed {seed}, on {on}", ck.dir.display(), ck.meta.step))
        }
        (None, Some(p)) => {
            let (images, total) = eval::read_samples(p, n)?;
            let count = images.size()[0];
            (images, format!("{} ({count} of {total} images)", p.display()))
        }
        (None, None) => bail!("give --checkpoint or --samples"),
    };
    let path = cls::resolve_path(classifier, &data_dir);
    let evaluator = Evaluator::load(&path, device)?;
    let report = evaluator.evaluate(&images)?;
    println!("{source}");
    print!("{}", report.table());
    println!("{}", serde_json::Value::Object(report.to_json()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and positional argument of every subcommand, with its command path.
    fn args(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for a in cmd.get_arguments() {
            out.push((path.to_string(), a.clone()));
        }
        for sub in cmd.get_subcommands() {
            args(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_argument_has_help() {
        let mut all = Vec::new();
        args(&Cli::command(), "gandist", &mut all);
        assert!(all.len() > 40, "{} arguments", all.len());
        let missing: Vec<String> = all
            .iter()
            .filter(|(_, a)| a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version"))
            .map(|(p, a)| format!("{p} --{}", a.get_id()))
            .collect();
        assert!(missing.is_empty(), "arguments without help text: {missing:?}");
    }

    /// What docs/distributed.md tells users coming from PyTorch holds: its gandist commands
    /// and flags parse, the config keys it names exist, the files it names are there.
    #[test]
    fn pytorch_users_section_holds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let docs = std::fs::read_to_string(root.join("docs/distributed.md")).unwrap();
        let start = docs.find("\n## For users coming from PyTorch\n").expect("docs/distributed.md has the section");
        let section = &docs[start + 1..];
        let section = &section[..section[1..].find("\n## ").map_or(section.len(), |i| i + 1)];
        // The gandist column of the table: the second cell of each row.
        let cells: Vec<&str> = section
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| with PyTorch"))
            .filter_map(|l| l.split(" | ").nth(1))
            .collect();
        assert!(cells.len() >= 10, "{cells:?}");
        let spans: Vec<&str> = cells.iter().flat_map(|c| c.split('`').skip(1).step_by(2)).collect();
        let parse = |argv: Vec<&str>, span: &str| {
            match Cli::try_parse_from(&argv) {
                Err(e) if e.kind() != clap::error::ErrorKind::DisplayHelp => {
                    panic!("docs/distributed.md: `{span}` does not parse as {argv:?}: {e}")
                }
                _ => {}
            }
        };
        let (mut commands, mut flags, mut keys, mut files) = (0, 0, 0, 0);
        let setting = |kv: &str, span: &str| {
            gandist::config::Config::from_toml_str("", &[kv.to_string()])
                .unwrap_or_else(|e| panic!("docs/distributed.md: `{span}` is not a valid setting: {e:#}"));
        };
        for span in &spans {
            for path in span.split_whitespace().filter(|w| w.starts_with("launch/")) {
                assert!(root.join(path).exists(), "docs/distributed.md names {path}, which does not exist");
                files += 1;
            }
            // Commands: what follows `gandist`, up to `...`; placeholders given values.
            if let Some(at) = span.find("gandist ") {
                let mut argv: Vec<&str> = vec!["gandist"];
                argv.extend(span[at + 8..].split_whitespace().take_while(|w| *w != "..."));
                if argv.last() == Some(&"--config") {
                    argv.push("c.toml");
                }
                let argv = argv.into_iter().map(|w| if w == "RUN_DIR" { "runs/x" } else { w }).collect();
                parse(argv, span);
                commands += 1;
            } else if let Some(flag) = span.strip_prefix("--").map(|_| span.split_whitespace().collect::<Vec<_>>()) {
                // A flag of `gandist train`, with its placeholder value.
                let flag = flag.into_iter().map(|w| match w {
                    "FILE.toml" => "c.toml",
                    "section.key=value" => "train.seed=1",
                    w => w,
                });
                let mut argv = vec!["gandist", "train", "--config", "c.toml"];
                argv.extend(flag);
                if argv[4] != "--config" {
                    if argv[4] == "--set" {
                        setting(argv[5], span);
                        keys += 1;
                    }
                    parse(argv, span);
                    flags += 1;
                }
            } else if let Some((key, value)) = span.split_once(" = ") {
                setting(&format!("{key}={value}"), span);
                keys += 1;
            }
        }
        assert!(commands >= 4 && flags >= 2 && keys >= 2 && files >= 2, "found {commands} commands, {flags} flags, {keys} settings, {files} files");
    }

    #[test]
    fn data_folder_flags_name_their_environment_variable() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        args(&cmd, "gandist", &mut all);
        let data: Vec<_> = all.iter().filter(|(_, a)| a.get_id() == "data").collect();
        assert_eq!(data.len(), 6, "train, ablate, eval, classifier train, data fetch, data verify");
        for (path, a) in data {
            assert_eq!(a.get_env().and_then(|e| e.to_str()), Some("GANDIST_DATA"), "{path}");
        }
        let help = cmd.find_subcommand_mut("train").unwrap().render_long_help().to_string();
        assert!(help.contains("[env: GANDIST_DATA="), "{help}");
    }
}
