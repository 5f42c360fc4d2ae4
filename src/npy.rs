//! NumPy `.npy` files (through the npyz crate): noise in for `gandist sample --noise`
//! (float32, N x latent, checked before use: every way it can be wrong is an error naming the
//! file and what was expected) and generated images out (float32).

use anyhow::{bail, Context, Result};
use npyz::{DType, TypeChar, WriterBuilder};
use std::path::Path;

/// A float32 matrix of `rows` x `cols`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

/// A readable name for a NumPy type: "float64 (<f8)".
fn describe(dtype: &DType) -> String {
    match dtype {
        DType::Plain(ts) => {
            let kind = match ts.type_char() {
                TypeChar::Float => "float",
                TypeChar::Int => "int",
                TypeChar::Uint => "uint",
                TypeChar::Bool => return format!("bool ({ts})"),
                _ => return format!("{ts}"),
            };
            format!("{kind}{} ({ts})", ts.size_field() * 8)
        }
        other => format!("a structured type ({})", other.descr()),
    }
}

/// Reads standard-normal noise for a generator of noise width `latent`: a finite float32
/// array of shape (N, latent) with N >= 1, little- or big-endian, C or Fortran order.
pub fn read_noise(path: &Path, latent: usize) -> Result<Matrix> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read noise file {}", path.display()))?;
    let expected = format!("expected a float32 array of shape (N, {latent}), as np.save(path, z.astype(np.float32)) writes");
    let file = npyz::NpyFile::new(&bytes[..]).map_err(|e| anyhow::anyhow!("{}: not a NumPy .npy file ({e}): {expected}", path.display()))?;
    let dtype = file.dtype();
    let float32 = matches!(&dtype, DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4);
    if !float32 {
        bail!("{}: holds {}: {expected}", path.display(), describe(&dtype));
    }
    let shape = file.shape().to_vec();
    let (rows, cols) = match shape[..] {
        [r, c] => (r as usize, c as usize),
        _ => bail!("{}: has shape {shape:?}: {expected}", path.display()),
    };
    if cols != latent {
        bail!("{}: has shape ({rows}, {cols}), {cols} values per row: expected {latent}, the generator's latent size (model.latent)", path.display());
    }
    if rows == 0 {
        bail!("{}: has no rows: {expected} with N >= 1", path.display());
    }
    let order = file.order();
    let want_bytes = rows * cols * 4;
    let data_bytes = file.into_inner().len();
    if data_bytes < want_bytes {
        bail!("{}: truncated: its header promises {rows} x {cols} float32 values ({want_bytes} bytes), the file holds {data_bytes}", path.display());
    }
    if data_bytes > want_bytes {
        bail!("{}: {} bytes after the {rows} x {cols} float32 values its header promises: not a whole .npy file", path.display(), data_bytes - want_bytes);
    }
    let file = npyz::NpyFile::new(&bytes[..]).expect("the header parsed once");
    let raw: Vec<f32> = file.into_vec().with_context(|| format!("cannot read the values of {}", path.display()))?;
    let values = match order {
        npyz::Order::C => raw,
        npyz::Order::Fortran => (0..rows * cols).map(|i| raw[(i % cols) * rows + i / cols]).collect(),
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{}: row {}, column {} is {}: expected finite values", path.display(), i / cols, i % cols, values[i]);
    }
    Ok(Matrix { rows, cols, values })
}

/// The bytes of a float32 .npy file of `shape` (C order, little-endian).
pub fn encode_f32(shape: &[usize], values: &[f32]) -> Result<Vec<u8>> {
    let n: usize = shape.iter().product();
    if n != values.len() {
        bail!(".npy: shape {shape:?} holds {n} values, got {}", values.len());
    }
    let mut out = Vec::new();
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd()?;
    w.extend(values.iter().copied())?;
    w.finish()?;
    Ok(out)
}

/// Writes a float32 .npy file atomically.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let bytes = encode_f32(shape, values)?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A .npy file with the given header dictionary and data bytes, as NumPy lays it out
    /// (format 1.0: magic, version, header length, header padded to 64 bytes with a newline).
    fn npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((h.len() as u16).to_le_bytes());
        out.extend(h.as_bytes());
        out.extend(data);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn read(bytes: &[u8], latent: usize) -> Result<Matrix> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z.npy");
        std::fs::write(&p, bytes).unwrap();
        read_noise(&p, latent)
    }

    fn err(bytes: &[u8], latent: usize) -> String {
        format!("{:#}", read(bytes, latent).unwrap_err())
    }

    #[test]
    fn float32_matrices_read_in_either_order_and_endianness() {
        let c = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(read(&c, 3).unwrap(), Matrix { rows: 2, cols: 3, values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] });
        // Fortran order stores columns: 1 4 2 5 3 6.
        let f = npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &f32s(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]));
        assert_eq!(read(&f, 3).unwrap().values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        let b = npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1, 2), }", &be);
        assert_eq!(read(&b, 2).unwrap().values, vec![1.5, -2.0]);
        // What encode_f32 writes reads back.
        let mut bytes = encode_f32(&[2, 2], &[0.5, 1.0, 1.5, 2.0]).unwrap();
        assert_eq!(read(&bytes, 2).unwrap().values, vec![0.5, 1.0, 1.5, 2.0]);
        bytes.pop();
        assert!(err(&bytes, 2).contains("truncated"));
    }

    /// Each way a noise file can be wrong is named with what was expected.
    #[test]
    fn bad_noise_files_are_named() {
        let ok = |descr: &str, shape: &str, data: &[u8]| npy(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"), data);
        let e = err(&ok("<f8", "(1, 2)", &[0; 16]), 2);
        assert!(e.contains("float64 (<f8)") && e.contains("expected a float32 array of shape (N, 2)") && e.contains("z.npy"), "{e}");
        let e = err(&ok("<i8", "(1, 2)", &[0; 16]), 2);
        assert!(e.contains("int64 (<i8)"), "{e}");
        let e = err(&ok("<f4", "(2, 3)", &[0; 24]), 16);
        assert!(e.contains("3 values per row: expected 16"), "{e}");
        let e = err(&ok("<f4", "(6,)", &[0; 24]), 6);
        assert!(e.contains("shape [6]"), "{e}");
        let e = err(&ok("<f4", "(0, 4)", &[]), 4);
        assert!(e.contains("no rows"), "{e}");
        let e = err(&ok("<f4", "(2, 2)", &f32s(&[0.0, 1.0, f32::NAN, 0.0])), 2);
        assert!(e.contains("row 1, column 0 is NaN") && e.contains("finite"), "{e}");
        let e = err(&ok("<f4", "(1, 2)", &f32s(&[f32::INFINITY, 0.0])), 2);
        assert!(e.contains("row 0, column 0 is inf"), "{e}");
        let e = err(&ok("<f4", "(4, 2)", &[0; 12]), 2);
        assert!(e.contains("truncated") && e.contains("32 bytes") && e.contains("holds 12"), "{e}");
        let e = err(&ok("<f4", "(1, 2)", &[0; 12]), 2);
        assert!(e.contains("4 bytes after"), "{e}");
        let e = err(b"not numpy at all", 2);
        assert!(e.contains("not a NumPy .npy file"), "{e}");
        let e = err(&b"\x93NUMPY\x01\x00\x40\x00{'descr'"[..], 2);
        assert!(e.contains("not a NumPy .npy file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = format!("{:#}", read_noise(&dir.path().join("absent.npy"), 2).unwrap_err());
        assert!(e.contains("cannot read noise file") && e.contains("absent.npy"), "{e}");
    }
}
