//! Sample output: PNG grids of generated images, a folder of one PNG per sample (for
//! pytorch-fid and clean-fid), animated GIFs of latent walks, and IDX export for other tools.

use anyhow::{bail, Context, Result};
use image::GrayImage;
use std::io::Write;
use std::path::Path;

/// Lays out `n` 28x28 byte images in a near-square grid with a 2-pixel border.
pub fn grid(images: &[u8], n: usize, side: usize) -> Result<GrayImage> {
    grid_with_columns(images, n, side, (n as f64).sqrt().ceil() as usize)
}

/// Lays out `n` byte images of `side` x `side` in rows of `cols`, with a 2-pixel border.
pub fn grid_with_columns(images: &[u8], n: usize, side: usize, cols: usize) -> Result<GrayImage> {
    if images.len() != n * side * side || n == 0 || cols == 0 {
        bail!("grid: expected {n} images of {side}x{side} bytes in rows of {cols}, got {} bytes", images.len());
    }
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (w, h) = (cols * (side + pad) + pad, rows * (side + pad) + pad);
    let mut img = GrayImage::new(w as u32, h as u32);
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        for y in 0..side {
            for x in 0..side {
                let v = images[i * side * side + y * side + x];
                img.put_pixel((pad + c * (side + pad) + x) as u32, (pad + r * (side + pad) + y) as u32, image::Luma([v]));
            }
        }
    }
    Ok(img)
}

/// Writes a grid PNG atomically.
pub fn write_grid_png(path: &Path, images: &[u8], n: usize, side: usize) -> Result<()> {
    let img = grid(images, n, side)?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .context("encoding PNG")?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write sample grid {}", path.display()))
}

/// Writes a grid of `n` images of `channels` (1: grey, 3: RGB) channels, atomically.
pub fn write_grid(path: &Path, images: &[u8], n: usize, channels: usize, side: usize) -> Result<()> {
    write_grid_with_columns(path, images, n, channels, side, (n as f64).sqrt().ceil() as usize)
}

/// The same in rows of `cols` images.
pub fn write_grid_with_columns(path: &Path, images: &[u8], n: usize, channels: usize, side: usize, cols: usize) -> Result<()> {
    let img = grid_image(images, n, channels, side, cols)?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("encoding PNG")?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write sample grid {}", path.display()))
}

/// The PNG of a near-square grid of `n` images (n, channels, side, side), and its width and
/// height.
pub fn grid_png(images: &[u8], n: usize, channels: usize, side: usize) -> Result<(Vec<u8>, u32, u32)> {
    let img = grid_image(images, n, channels, side, (n as f64).sqrt().ceil() as usize)?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("encoding PNG")?;
    Ok((bytes, img.width(), img.height()))
}

/// A grid of `n` images (n, channels, side, side) in rows of `cols`: grey or RGB.
fn grid_image(images: &[u8], n: usize, channels: usize, side: usize, cols: usize) -> Result<image::DynamicImage> {
    if channels == 1 {
        return Ok(grid_with_columns(images, n, side, cols)?.into());
    }
    if channels != 3 || images.len() != n * 3 * side * side {
        bail!("grid: expected {n} images of {channels}x{side}x{side} bytes (1 or 3 channels), got {} bytes", images.len());
    }
    // One grey grid per channel, then interleaved into RGB.
    let plane = side * side;
    let grids: Vec<GrayImage> = (0..3)
        .map(|c| {
            let ch: Vec<u8> = (0..n).flat_map(|i| images[(i * 3 + c) * plane..(i * 3 + c + 1) * plane].to_vec()).collect();
            grid_with_columns(&ch, n, side, cols)
        })
        .collect::<Result<_>>()?;
    let (w, h) = grids[0].dimensions();
    Ok(image::RgbImage::from_fn(w, h, |x, y| image::Rgb([0, 1, 2].map(|c| grids[c].get_pixel(x, y).0[0]))).into())
}

/// The PNG bytes of image `i` of (n, channels, side, side) bytes: grey or RGB.
fn sample_png(images: &[u8], i: usize, channels: usize, side: usize) -> Result<Vec<u8>> {
    let plane = side * side;
    let at = &images[i * channels * plane..(i + 1) * channels * plane];
    let img: image::DynamicImage = match channels {
        1 => GrayImage::from_raw(side as u32, side as u32, at.to_vec()).expect("sized").into(),
        _ => image::RgbImage::from_fn(side as u32, side as u32, |x, y| {
            let p = y as usize * side + x as usize;
            image::Rgb([at[p], at[plane + p], at[2 * plane + p]])
        })
        .into(),
    };
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("encoding PNG")?;
    Ok(bytes)
}

/// The file names of a PNG folder of `n` samples: zero-padded indices, at least 6 digits,
/// so that a sorted listing is the sample order ("000000.png", ...).
pub fn png_dir_name(i: usize, n: usize) -> String {
    let digits = (n.saturating_sub(1)).to_string().len().max(6);
    format!("{i:0digits$}.png")
}

/// Writes `n` images (n, channels, side, side) as one PNG each into the new folder `dir`,
/// atomically as a whole: into a temporary folder beside it (encoded on every core this
/// process may use), which is synced (one `syncfs`) and renamed to `dir` at the end. An existing `dir` is
/// refused, so that two runs' samples never mix.
pub fn write_png_dir(dir: &Path, images: &[u8], n: usize, channels: usize, side: usize) -> Result<()> {
    if images.len() != n * channels * side * side || n == 0 || !(channels == 1 || channels == 3) {
        bail!("PNG folder: expected {n} images of {channels}x{side}x{side} bytes (1 or 3 channels), got {} bytes", images.len());
    }
    if dir.exists() {
        bail!("{} already exists: expected a new folder for the samples (remove it or name another)", dir.display());
    }
    let parent = crate::fsutil::parent_dir(dir);
    let name = dir.file_name().context("the output folder has a name")?.to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp"));
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove stale {}", tmp.display()))?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let threads = crate::cpus::allowed().map(|c| c.len()).unwrap_or(1).clamp(1, n);
        let per = n.div_ceil(threads);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let tmp = &tmp;
                    s.spawn(move || -> Result<()> {
                        for i in t * per..((t + 1) * per).min(n) {
                            let path = tmp.join(png_dir_name(i, n));
                            let bytes = sample_png(images, i, channels, side)?;
                            let mut f = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
                            f.write_all(&bytes).with_context(|| format!("cannot write {}", path.display()))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("a PNG writer panicked"))
        })?;
        // One sync for all files (a sync per file made 50,000 samples take minutes).
        crate::fsutil::sync_file_system(&tmp)?;
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
        crate::fsutil::sync_dir(parent)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes an animated GIF (looping) of `frames`, each `n` images (n, channels, side, side)
/// laid out as a near-square grid, atomically. Each frame is scaled up by a whole factor to
/// at least 256 pixels wide (nearest neighbour: pixels stay the generator's).
pub fn write_gif(path: &Path, frames: &[Vec<u8>], n: usize, channels: usize, side: usize, frame_ms: u32) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let cols = (n as f64).sqrt().ceil() as usize;
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut bytes, 10);
        enc.set_repeat(Repeat::Infinite).context("encoding GIF")?;
        for f in frames {
            let img = grid_image(f, n, channels, side, cols)?.to_rgba8();
            let scale = 256u32.div_ceil(img.width()).max(1);
            let img = image::imageops::resize(&img, img.width() * scale, img.height() * scale, image::imageops::FilterType::Nearest);
            let delay = image::Delay::from_numer_denom_ms(frame_ms, 1);
            enc.encode_frame(image::Frame::from_parts(img, 0, 0, delay)).context("encoding GIF")?;
        }
    }
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `n` images of `channels` channels as IDX, (n, side, side) for one channel and
/// (n, channels, side, side) otherwise, atomically.
pub fn write_idx_channels(path: &Path, images: &[u8], n: usize, channels: usize, side: usize) -> Result<()> {
    let dims = if channels == 1 { vec![n, side, side] } else { vec![n, channels, side, side] };
    if images.len() != dims.iter().product::<usize>() {
        bail!("IDX export: expected {} bytes for dimensions {dims:?}, got {}", dims.iter().product::<usize>(), images.len());
    }
    let bytes = crate::data::idx::encode_idx(&dims, images);
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `n` images as an IDX (n, side, side) unsigned-byte file, atomically.
pub fn write_idx(path: &Path, images: &[u8], n: usize, side: usize) -> Result<()> {
    let bytes = crate::data::idx::encode_idx(&[n, side, side], images);
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_each_image() {
        let side = 3;
        let n = 5; // 3 columns, 2 rows
        let images: Vec<u8> = (0..n).flat_map(|i| vec![(i * 50 + 10) as u8; side * side]).collect();
        let g = grid(&images, n, side).unwrap();
        assert_eq!((g.width(), g.height()), (3 * 5 + 2, 2 * 5 + 2));
        assert_eq!(g.get_pixel(2, 2).0[0], 10);
        assert_eq!(g.get_pixel(2 + 5, 2).0[0], 60);
        assert_eq!(g.get_pixel(2 + 5, 2 + 5).0[0], 210);
        assert_eq!(g.get_pixel(0, 0).0[0], 0);
    }

    #[test]
    fn rgb_grid_puts_channels_in_colours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.png");
        // Two 3-channel 2x2 images: channel c of image i holds 10 * i + c.
        let images: Vec<u8> = (0..2).flat_map(|i| (0..3).flat_map(move |c| vec![(10 * i + c) as u8; 4])).collect();
        write_grid(&p, &images, 2, 3, 2).unwrap();
        let png = image::open(&p).unwrap().to_rgb8();
        assert_eq!(png.get_pixel(2, 2).0, [0, 1, 2]);
        assert_eq!(png.get_pixel(2 + 4, 2).0, [10, 11, 12]);
        assert!(write_grid(&p, &images, 2, 2, 2).is_err());
    }
}
