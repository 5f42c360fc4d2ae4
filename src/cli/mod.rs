//! The `gandist` command line: one module per command, each owning its arguments (a clap
//! `Args` struct) and its `run`. `src/main.rs` parses and calls `run` here.

mod ablate;
mod bench;
mod checkpoint;
mod classifier;
mod data;
mod eval;
mod export;
mod fid;
mod plot;
mod sample;
mod selftest;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gandist", version, about = "Stable, observable, data-parallel GAN training on MNIST")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GAN (run under mpirun or srun for data-parallel training).
    Train(train::Args),
    /// Generate samples from a checkpoint's generator.
    Sample(sample::Args),
    /// Export a checkpoint's generator as TorchScript, ONNX or safetensors (docs/export.md).
    Export(export::Args),
    /// Train every configuration in a folder for its fixed budget and write a report.
    Ablate(ablate::Args),
    /// Write PNG plots of a run's losses and gradient norms (from its metrics.jsonl) into RUN_DIR/plots.
    Plot(plot::Args),
    /// Sample quality of a checkpoint's generator or of an IDX file of samples: classifier-feature
    /// FID against the MNIST test set, class histogram and coverage, confidence.
    Eval(eval::Args),
    /// Inception FID of two folders of images or .npz statistics, as pytorch-fid computes it (and KID, precision/recall).
    Fid(fid::Args),
    /// The MNIST classifier that `eval` uses.
    Classifier {
        #[command(subcommand)]
        action: classifier::Action,
    },
    /// Fetch or verify the MNIST files.
    Data {
        #[command(subcommand)]
        action: data::Action,
    },
    /// Images/s of the training iteration on synthetic data.
    Bench(bench::Args),
    /// Ask about a run's checkpoints: `latest` is the one `train --resume auto` would take.
    Checkpoint {
        #[command(subcommand)]
        action: checkpoint::Action,
    },
    /// Exercises the collectives of the chosen backend with known values, even on one rank,
    /// and on NCCL the abort path (for launch/gpu-check.sh); non-zero exit on any failure.
    #[command(hide = true)]
    SelftestCollectives(selftest::Args),
}

/// Which generator weights a command reads out of a checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Weights {
    Auto,
    Ema,
    Raw,
}

impl From<Weights> for crate::train::snapshot::GeneratorWeights {
    fn from(w: Weights) -> Self {
        match w {
            Weights::Auto => Self::Auto,
            Weights::Ema => Self::Ema,
            Weights::Raw => Self::Raw,
        }
    }
}

/// Runs the parsed command; its exit code, or the error that `main` prints.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Export(a) => export::run(a),
        Command::Ablate(a) => ablate::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Fid(a) => fid::run(a),
        Command::Classifier { action } => classifier::run(action),
        Command::Data { action } => data::run(action),
        Command::Bench(a) => bench::run(a),
        Command::Checkpoint { action } => checkpoint::run(action),
        Command::SelftestCollectives(a) => selftest::run(a),
    }
}

#[cfg(test)]
mod tests;
