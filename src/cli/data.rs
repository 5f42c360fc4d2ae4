//! `gandist data`: fetch or import the MNIST files, and verify them.

use crate::data::mnist;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Action {
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

pub fn run(action: Action) -> Result<ExitCode> {
    let dir = match action {
        Action::Fetch { data, from } => {
            let dir = mnist::resolve_dir(data.as_deref());
            match from {
                Some(src) => mnist::import(&src, &dir)?,
                None => mnist::fetch(&dir)?,
            }
            dir
        }
        Action::Verify { data } => mnist::resolve_dir(data.as_deref()),
    };
    for line in mnist::verify(&dir)? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
