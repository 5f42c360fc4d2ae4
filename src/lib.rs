//! gandist: stable, observable, data-parallel GAN training on MNIST.
//!
//! Module map: `config` (TOML schema), `data` (IDX, MNIST, sampler), `model` (networks: the paper's and the DCGAN family),
//! `objective` (adversarial losses), `regularize` (penalties and parameter regularisers),
//! `optim` (Adam, SGD, clipping), `health` (gradient-health detector), `ablation`
//! (`gandist ablate`), `collectives` (all-reduce and broadcast over MPI, NCCL or one process; the backend choice; launchers that started copies MPI did not join), `train` (the trainer and the run),
//! `checkpoint` (the on-disk format), `samples`, `scalar_log` (metrics.jsonl: its schema and
//! file), `seeds` (every random stream), `bench`, `metrics` (Prometheus registry and
//! exporter), `plot` (PNG curves of the scalar log), `eval` (sample quality: classifier FID,
//! coverage; Inception FID as pytorch-fid, KID as torch-fidelity, precision/recall), `run_lock` (one job per run directory), `hostread` (the one, counted, place where tensor data reaches the host), `cpus`
//! (the affinity mask and threads per rank), `logging` (timestamped, levelled log lines with
//! the rank), `cli` (the command line: one module per command), `export` (the generator as
//! TorchScript, ONNX and safetensors files), `npy` (NumPy .npy noise in, arrays out),
//! `tensorboard` (event files: scalars, images, restarts).

pub mod ablation;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod cpus;
pub mod data;
pub mod device;
pub mod collectives;
pub mod eval;
pub mod export;
pub mod fsutil;
pub mod health;
pub mod hostread;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod regularize;
pub mod run_lock;
pub mod samples;
pub mod scalar_log;
pub mod seeds;
pub mod tensorboard;
pub mod train;

/// The libtorch version this build is made for (tch 0.24 checks it at build time).
pub const LIBTORCH_VERSION: &str = "2.11.0";
