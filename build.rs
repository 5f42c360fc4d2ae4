//! Link fix: rustc links with `--as-needed`, which drops `libtorch_cuda.so` from a binary that
//! does not reference its symbols directly, and the binary then sees no CUDA at run time.
//! Force the libtorch libraries into every binary and test of this crate.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // `rustc-link-arg` reaches every linked target: the binary, unit tests and integration tests.
    let args = |flag: &str| println!("cargo:rustc-link-arg={flag}");
    args(&format!("-Wl,-rpath,{lib}"));
    args("-Wl,--no-as-needed");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        args("-ltorch_cuda");
    }
    args("-ltorch");
    args("-Wl,--as-needed");
}
