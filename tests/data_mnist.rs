//! The MNIST loader on the real files, verification, import, and fetching over HTTP from a
//! local mirror (a real server on loopback) with fallback and checksum rejection.

mod common;
use common::*;
use gandist::data::{Mnist, Split};
use std::io::{Read, Write};
use std::net::TcpListener;

#[test]
fn real_mnist_matches_published_facts() {
    let dir = mnist_dir();
    let train = Mnist::load(&dir, Split::Train).unwrap();
    assert_eq!(train.n, 60000);
    let mut counts = [0usize; 10];
    train.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    let mean = train.images.iter().map(|&p| p as f64).sum::<f64>() / train.images.len() as f64;
    assert!((mean - 33.318).abs() < 0.001, "mean pixel {mean}");
    let test = Mnist::load(&dir, Split::Test).unwrap();
    let mut counts = [0usize; 10];
    test.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
    let out = ok(&["data", "verify", "--data", dir.to_str().unwrap()]);
    assert_eq!(out.matches("ok ").count(), 4, "{out}");
}

/// A folder with the test split replaced by a modified copy: each inconsistency is named.
#[test]
fn inconsistent_files_are_named() {
    let dir = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let imgs = gandist::data::idx::read_idx(&dir.join("t10k-images-idx3-ubyte.gz"), 3).unwrap();
    let labels = gandist::data::idx::read_idx(&dir.join("t10k-labels-idx1-ubyte.gz"), 1).unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(tmp.path().join(name), bytes).unwrap();
    // Count mismatch.
    write("t10k-images-idx3-ubyte", gandist::data::idx::encode_idx(&[10, 28, 28], &imgs.data[..7840]));
    write("t10k-labels-idx1-ubyte", gandist::data::idx::encode_idx(&[9], &labels.data[..9]));
    let e = format!("{:#}", Mnist::load(tmp.path(), Split::Test).err().unwrap());
    assert!(e.contains("10 images") && e.contains("9 labels"), "{e}");
    // A label over 9.
    let mut l = labels.data[..10].to_vec();
    l[4] = 11;
    write("t10k-labels-idx1-ubyte", gandist::data::idx::encode_idx(&[10], &l));
    let e = format!("{:#}", Mnist::load(tmp.path(), Split::Test).err().unwrap());
    assert!(e.contains("label 11 at index 4"), "{e}");
    // Wrong image size.
    write("t10k-images-idx3-ubyte", gandist::data::idx::encode_idx(&[10, 28, 27], &imgs.data[..7560]));
    let e = format!("{:#}", Mnist::load(tmp.path(), Split::Test).err().unwrap());
    assert!(e.contains("28x27"), "{e}");
    // A truncated gzip file.
    let gz = std::fs::read(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    std::fs::remove_file(tmp.path().join("t10k-labels-idx1-ubyte")).unwrap();
    write("t10k-labels-idx1-ubyte.gz", gz[..gz.len() / 2].to_vec());
    let e = format!("{:#}", Mnist::load(tmp.path(), Split::Test).err().unwrap());
    assert!(e.contains("t10k-labels-idx1-ubyte.gz"), "{e}");
}

#[test]
fn import_verifies_and_checksum_mismatch_is_refused() {
    let dir = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("data");
    ok(&["data", "fetch", "--from", dir.to_str().unwrap(), "--data", dst.to_str().unwrap()]);
    ok(&["data", "verify", "--data", dst.to_str().unwrap()]);
    // A source whose test labels differ by one byte: refused, and nothing written for it.
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for f in gandist::data::mnist::FILES.iter() {
        std::fs::copy(dir.join(format!("{}.gz", f.name)), src.join(format!("{}.gz", f.name))).unwrap();
    }
    let labels = gandist::data::idx::read_idx(&dir.join("t10k-labels-idx1-ubyte.gz"), 1).unwrap();
    let mut l = labels.data.clone();
    l[0] = (l[0] + 1) % 10;
    std::fs::remove_file(src.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    std::fs::write(src.join("t10k-labels-idx1-ubyte"), gandist::data::idx::encode_idx(&[10000], &l)).unwrap();
    let dst2 = tmp.path().join("data2");
    fails(&["data", "fetch", "--from", src.to_str().unwrap(), "--data", dst2.to_str().unwrap()], &["checksum mismatch", "t10k-labels-idx1-ubyte"]);
    assert!(!dst2.join("t10k-labels-idx1-ubyte").exists());
    fails(&["data", "verify", "--data", tmp.path().to_str().unwrap()], &["not found", "gandist data fetch"]);
}

/// Serves `root` over HTTP on loopback: paths under /good/ are the files, /bad/ serves
/// valid gzip files of altered content, anything else 404. Handles `max` requests then stops.
fn serve(root: std::path::PathBuf, max: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let mut s = stream.unwrap();
            let mut req = [0u8; 4096];
            let n = s.read(&mut req).unwrap();
            let line = String::from_utf8_lossy(&req[..n]).lines().next().unwrap_or("").to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let name = path.rsplit('/').next().unwrap_or("");
            let body = if path.starts_with("/good/") {
                std::fs::read(root.join(name)).ok()
            } else if path.starts_with("/bad/") {
                // A well-formed gzip of altered content: only the SHA-256 can tell.
                std::fs::read(root.join(name)).ok().map(|b| {
                    let mut raw = Vec::new();
                    flate2::read::GzDecoder::new(&b[..]).read_to_end(&mut raw).unwrap();
                    let k = raw.len() - 1;
                    raw[k] ^= 0xff;
                    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    enc.write_all(&raw).unwrap();
                    enc.finish().unwrap()
                })
            } else {
                None
            };
            match body {
                Some(b) => {
                    write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len()).unwrap();
                    s.write_all(&b).unwrap();
                }
                None => write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap(),
            }
        }
    });
    (addr, h)
}

#[test]
fn fetch_tries_mirrors_in_turn_and_keeps_only_verified_files() {
    let dir = mnist_dir();
    // Per file: a 404 mirror, a corrupting mirror, then a good one: 3 requests x 4 files.
    let (addr, server) = serve(dir.clone(), 12);
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("mnist");
    let mirrors = format!("{addr}/missing/,{addr}/bad/,{addr}/good/");
    let o = std::process::Command::new(bin())
        .args(["data", "fetch", "--data", dst.to_str().unwrap()])
        .env("GANDIST_MNIST_MIRRORS", mirrors)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("404") && t.contains("checksum mismatch"), "{t}");
    assert_eq!(t.matches("fetched and verified").count(), 4, "{t}");
    server.join().unwrap();
    ok(&["data", "verify", "--data", dst.to_str().unwrap()]);
    let leftovers: Vec<_> = std::fs::read_dir(&dst).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".part")).collect();
    assert!(leftovers.is_empty());
}

#[test]
fn fetch_with_no_working_mirror_fails_and_names_each() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, server) = serve(tmp.path().to_path_buf(), 2);
    let o = std::process::Command::new(bin())
        .args(["data", "fetch", "--data", tmp.path().join("d").to_str().unwrap()])
        .env("GANDIST_MNIST_MIRRORS", format!("{addr}/a/,{addr}/b/"))
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(t.contains("could not fetch train-images-idx3-ubyte from any mirror") && t.contains("/a/") && t.contains("/b/"), "{t}");
    server.join().unwrap();
}
