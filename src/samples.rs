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
}
