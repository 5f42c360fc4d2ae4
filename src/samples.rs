//! Sample output: PNG grids of generated digits, and IDX export for other tools.

use anyhow::{bail, Context, Result};
use image::GrayImage;
use std::path::Path;

/// Lays out `n` 28x28 byte images in a near-square grid with a 2-pixel border.
pub fn grid(images: &[u8], n: usize, side: usize) -> Result<GrayImage> {
    if images.len() != n * side * side || n == 0 {
        bail!("grid: expected {n} images of {side}x{side} bytes, got {} bytes", images.len());
    }
    let cols = (n as f64).sqrt().ceil() as usize;
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
    if channels == 1 {
        return write_grid_png(path, images, n, side);
    }
    if channels != 3 || images.len() != n * 3 * side * side {
        bail!("grid: expected {n} images of {channels}x{side}x{side} bytes (1 or 3 channels), got {} bytes", images.len());
    }
    // One grey grid per channel, then interleaved into RGB.
    let plane = side * side;
    let grids: Vec<GrayImage> = (0..3)
        .map(|c| {
            let ch: Vec<u8> = (0..n).flat_map(|i| images[(i * 3 + c) * plane..(i * 3 + c + 1) * plane].to_vec()).collect();
            grid(&ch, n, side)
        })
        .collect::<Result<_>>()?;
    let (w, h) = grids[0].dimensions();
    let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([0, 1, 2].map(|c| grids[c].get_pixel(x, y).0[0])));
    let mut bytes = Vec::new();
    rgb.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("encoding PNG")?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write sample grid {}", path.display()))
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
