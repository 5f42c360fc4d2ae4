//! A folder of images as pytorch-fid reads it: the files directly inside it (not in
//! subfolders) whose names end in one of its extensions (lower case, as its case-sensitive
//! glob matches them), in sorted order, each opened and converted to 8-bit RGB as PIL's
//! `.convert('RGB')` does (grey repeated to 3 channels, alpha dropped, palettes expanded),
//! then scaled to [0, 1] as torchvision's `ToTensor` does.

use anyhow::{bail, Context, Result};
use image::DynamicImage;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// pytorch-fid's `IMAGE_EXTENSIONS`.
pub const EXTENSIONS: [&str; 9] = ["bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"];

/// The image files of `dir`, as pytorch-fid lists them.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the image folder {}", dir.display()))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot read the image folder {}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some((_, ext)) = name.rsplit_once('.') {
            if EXTENSIONS.contains(&ext) {
                files.push(e.path());
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "{} holds no images: expected files directly inside it ending in .{} (lower case, as pytorch-fid finds them)",
            dir.display(),
            EXTENSIONS.join(", .")
        );
    }
    Ok(files)
}

/// One image as 8-bit RGB: (height, width, bytes in HWC order).
pub fn read_rgb(path: &Path) -> Result<(u32, u32, Vec<u8>)> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .decode()
        .with_context(|| format!("{} is not a readable image", path.display()))?;
    let rgb = match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageLumaA8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => img.to_rgb8(),
        other => bail!(
            "{}: {:?} pixels: only 8-bit images are read (PIL, and so pytorch-fid, reduces other depths to 8 bits in its own way); convert the image to 8 bits per channel first",
            path.display(),
            other.color()
        ),
    };
    let (w, h) = rgb.dimensions();
    Ok((h, w, rgb.into_raw()))
}

/// Images of one size as a float tensor (n, 3, h, w) in [0, 1]: `ToTensor`'s byte / 255.
pub fn to_tensor(bytes: &[u8], n: usize, h: u32, w: u32) -> Tensor {
    Tensor::from_slice(bytes)
        .view([n as i64, h as i64, w as i64, 3])
        .permute([0, 3, 1, 2])
        // ToTensor's `.permute((2, 0, 1)).contiguous()`: a permuted (channels-last) layout
        // would let libtorch pick other convolution kernels.
        .contiguous()
        .to_kind(Kind::Float)
        / 255.0
}

/// Consecutive runs of at most `batch` images of one size, decoded on background threads
/// (a batch's files in parallel, so that decoding keeps up with a GPU) while the caller works
/// on the previous run.
pub struct Batches {
    rx: std::sync::mpsc::Receiver<Result<Tensor>>,
    _worker: std::thread::JoinHandle<()>,
}

/// Decodes `files` in order, on up to `threads` threads.
fn decode_all(files: &[PathBuf], threads: usize) -> Vec<Result<(u32, u32, Vec<u8>)>> {
    let per = files.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = files.chunks(per).map(|c| s.spawn(move || c.iter().map(|f| read_rgb(f)).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|h| h.join().expect("an image decoder thread panicked")).collect()
    })
}

impl Batches {
    pub fn new(files: Vec<PathBuf>, batch: usize) -> Batches {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let worker = std::thread::spawn(move || {
            let mut run: Vec<u8> = Vec::new();
            let (mut n, mut size) = (0usize, (0u32, 0u32));
            for group in files.chunks(batch.max(1)) {
                for decoded in decode_all(group, threads) {
                    let (h, w, bytes) = match decoded {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    if n > 0 && ((h, w) != size || n == batch) {
                        if tx.send(Ok(to_tensor(&run, n, size.0, size.1))).is_err() {
                            return;
                        }
                        run.clear();
                        n = 0;
                    }
                    size = (h, w);
                    run.extend_from_slice(&bytes);
                    n += 1;
                }
            }
            if n > 0 {
                let _ = tx.send(Ok(to_tensor(&run, n, size.0, size.1)));
            }
        });
        Batches { rx, _worker: worker }
    }
}

impl Iterator for Batches {
    type Item = Result<Tensor>;

    fn next(&mut self) -> Option<Result<Tensor>> {
        self.rx.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_like_pytorch_fid_and_reads_grey_as_rgb() {
        let dir = tempfile::tempdir().unwrap();
        let grey = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(10 * x + 100 * y) as u8]));
        grey.save(dir.path().join("b.png")).unwrap();
        let rgba = image::RgbaImage::from_fn(3, 2, |x, _| image::Rgba([x as u8, 7, 9, 0]));
        rgba.save(dir.path().join("a.png")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("c.PNG"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        grey.save(dir.path().join("sub/d.png")).unwrap();
        let files = list(dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.png", "b.png"]);
        let (h, w, b) = read_rgb(&files[1]).unwrap();
        assert_eq!((h, w), (2, 3));
        assert_eq!(&b[..6], &[0, 0, 0, 10, 10, 10]);
        assert_eq!(&b[9..12], &[100, 100, 100]);
        // Alpha is dropped, not composited (PIL's RGBA -> RGB).
        let (_, _, b) = read_rgb(&files[0]).unwrap();
        assert_eq!(&b[3..6], &[1, 7, 9]);
        let t = to_tensor(&b, 1, 2, 3);
        assert_eq!(t.size(), vec![1, 3, 2, 3]);
        assert!((t.double_value(&[0, 1, 0, 0]) - 7.0 / 255.0).abs() < 1e-7);
        let sixteen = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(2, 2, |_, _| image::Luma([1000u16]));
        sixteen.save(dir.path().join("e.png")).unwrap();
        let e = format!("{:#}", read_rgb(&dir.path().join("e.png")).unwrap_err());
        assert!(e.contains("only 8-bit images"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = format!("{:#}", list(empty.path()).unwrap_err());
        assert!(e.contains("holds no images"), "{e}");
    }

    #[test]
    fn batches_split_at_size_changes() {
        let dir = tempfile::tempdir().unwrap();
        for (i, side) in [4u32, 4, 4, 5, 4].iter().enumerate() {
            image::RgbImage::from_pixel(*side, *side, image::Rgb([i as u8, 0, 0])).save(dir.path().join(format!("{i}.png"))).unwrap();
        }
        let sizes: Vec<Vec<i64>> = Batches::new(list(dir.path()).unwrap(), 2).map(|b| b.unwrap().size()).collect();
        assert_eq!(sizes, vec![vec![2, 3, 4, 4], vec![1, 3, 4, 4], vec![1, 3, 5, 5], vec![1, 3, 4, 4]]);
        std::fs::write(dir.path().join("9.png"), b"broken").unwrap();
        let last = Batches::new(list(dir.path()).unwrap(), 2).last().unwrap();
        assert!(format!("{:#}", last.unwrap_err()).contains("9.png"));
    }
}
