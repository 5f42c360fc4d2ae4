//! gandist: stable, observable, data-parallel GAN training on MNIST.
//!
//! Module map, bottom to top (a module uses only those on its level or below; `tests/layering.rs`
//! checks that no two reach each other):
//! - leaves: `net` (the two networks' names, `Net` and `PerNet`), `logging` (timestamped,
//!   levelled log lines with the rank), `hostread` (the one, counted, place where tensor data
//!   reaches the host), `seeds` (every random stream), `timing` (an update's stages), `fsutil`.
//! - `config`: the TOML schema, `[critic]` and `[generator]` with the old keys they replaced
//!   (`config::legacy`), `train.device` as a typed `DeviceChoice`.
//! - beside each other: `data` (IDX, MNIST, sampler), `model` (networks: the paper's and the DCGAN
//!   family), `objective`
//!   (adversarial losses), `regularize` (penalties and parameter regularisers), `optim` (Adam,
//!   SGD, clipping), `health` (gradient-health detector), `device` (the device a rank computes
//!   on), `cpus` (the affinity mask and threads per rank), `checkpoint` (the on-disk format),
//!   `samples` (grids and IDX files), `run_lock` (one job per run directory); `collectives`
//!   (all-reduce and broadcast over MPI, NCCL or one process; the backend choice; launchers
//!   that started copies MPI did not join).
//! - `sink`: the one interface of every reader of a run, and the typed records they get;
//!   `eval` (sample quality: classifier FID, coverage; Inception FID as pytorch-fid, KID as
//!   torch-fidelity, precision/recall) reports to it.
//! - the readers: `scalar_log` (metrics.jsonl: its file and keys), `metrics` (Prometheus
//!   registry and exporter), `tensorboard` (event files: scalars, images, restarts), `plot`
//!   (PNG curves of the scalar log), `sink::progress`.
//! - `train`: the trainer (phases as data, one state per network, typed figures) and the run.
//! - `npy` (NumPy .npy noise in, arrays out), `export` (the generator as TorchScript, ONNX and
//!   safetensors files).
//! - commands: `bench`, `ablation` (`gandist ablate`), `cli` (the command line: one module per
//!   command).

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
pub mod net;
pub mod npy;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod regularize;
pub mod run_lock;
pub mod samples;
pub mod scalar_log;
pub mod seeds;
pub mod sink;
pub mod timing;
pub mod tensorboard;
pub mod train;

/// The libtorch version this build is made for (tch 0.24 checks it at build time).
pub const LIBTORCH_VERSION: &str = "2.11.0";
