//! The IDX file format (MNIST's): strict parsing of raw or gzip files. The header is checked
//! against the bytes that are really there before any buffer of the declared size exists.

use anyhow::{bail, Context, Result};
use flate2::read::GzDecoder;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Largest payload accepted (4 GiB): a header claiming more is rejected before reading.
pub const MAX_PAYLOAD: u64 = 1 << 32;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// IDX element type code for unsigned bytes, the only one MNIST uses.
const TYPE_U8: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Opens `path` and returns a reader over its decompressed bytes (gzip detected by magic).
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = read_fully(&mut file, &mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if n == 2 && magic == GZIP_MAGIC {
        Ok(Box::new(GzDecoder::new(BufReader::new(file))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Reads an IDX file with `ndims` dimensions, raw or gzip.
pub fn read_idx(path: &Path, ndims: usize) -> Result<Idx> {
    let reader = open_decompressed(path)?;
    parse_idx(reader, ndims).with_context(|| format!("{} is not a valid IDX file", path.display()))
}

/// Parses an IDX stream. Over-long input, truncation and absurd headers are errors.
pub fn parse_idx(mut reader: impl Read, ndims: usize) -> Result<Idx> {
    let mut magic = [0u8; 4];
    let got = read_fully(&mut reader, &mut magic).context("reading the header")?;
    if got < 4 {
        bail!("truncated: {got} bytes, shorter than the 4-byte IDX magic");
    }
    if magic[0] != 0 || magic[1] != 0 {
        bail!("bad magic {:02x?}: expected 00 00 08 {:02x} (IDX, unsigned bytes, {ndims} dimensions)", magic, ndims);
    }
    if magic[2] != TYPE_U8 {
        bail!("element type 0x{:02x}: expected 0x08 (unsigned byte)", magic[2]);
    }
    if magic[3] as usize != ndims {
        bail!("{} dimensions: expected {ndims}", magic[3]);
    }
    let mut dims = Vec::with_capacity(ndims);
    let mut total: u64 = 1;
    for i in 0..ndims {
        let mut b = [0u8; 4];
        if read_fully(&mut reader, &mut b).context("reading the header")? < 4 {
            bail!("truncated header: dimension {i} of {ndims} is missing");
        }
        let d = u32::from_be_bytes(b) as u64;
        total = total.saturating_mul(d);
        dims.push(d as usize);
    }
    if total > MAX_PAYLOAD {
        bail!("header declares dimensions {dims:?} = {total} bytes, over the {MAX_PAYLOAD}-byte limit");
    }
    // The buffer grows only as real bytes arrive, so a lying header costs no memory.
    let mut data = Vec::new();
    reader.take(total + 1).read_to_end(&mut data).context("reading the data")?;
    let have = data.len() as u64;
    if have < total {
        bail!("truncated: header declares dimensions {dims:?} = {total} data bytes, but only {have} follow");
    }
    if have > total {
        bail!("over-long: more than the {total} data bytes that dimensions {dims:?} declare");
    }
    Ok(Idx { dims, data })
}

/// Serialises an IDX array of unsigned bytes (raw, uncompressed).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    assert_eq!(dims.iter().product::<usize>(), data.len());
    let mut out = vec![0, 0, TYPE_U8, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Like `read_exact` but returns how many bytes it got instead of failing at end of input.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], ndims: usize) -> Result<Idx> {
        parse_idx(bytes, ndims)
    }

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..24).collect();
        let idx = parse(&encode_idx(&[2, 3, 4], &data), 3).unwrap();
        assert_eq!(idx.dims, vec![2, 3, 4]);
        assert_eq!(idx.data, data);
    }

    #[test]
    fn rejects_each_malformation_with_a_reason() {
        let good = encode_idx(&[2, 3], &[7; 6]);
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (vec![], 2, "shorter than the 4-byte"),
            (vec![1, 0, 8, 2], 2, "bad magic"),
            (vec![0, 0, 0x0d, 2], 2, "element type"),
            (good.clone(), 3, "2 dimensions: expected 3"),
            (good[..6].to_vec(), 2, "truncated header"),
            (good[..good.len() - 1].to_vec(), 2, "truncated"),
            ([good.clone(), vec![0]].concat(), 2, "over-long"),
            (vec![0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2], 3, "over the"),
        ];
        for (bytes, ndims, want) in cases {
            let e = format!("{:#}", parse(&bytes, ndims).unwrap_err());
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn huge_header_with_little_data_is_truncation_not_allocation() {
        // Declares 4 GiB - 1 bytes, holds 3: must fail fast without reserving the declared size.
        let mut bytes = vec![0, 0, 8, 1];
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        let e = format!("{:#}", parse(&bytes, 1).unwrap_err());
        assert!(e.contains("only 3 follow"), "{e}");
    }

    /// Property test: random truncations, bit flips and header rewrites of a valid file never
    /// panic, and whatever parses is self-consistent (data length = product of dimensions).
    #[test]
    fn mutated_files_never_panic_and_parse_consistently() {
        let mut rng = crate::seeds::SplitMix64::new(42);
        let good = encode_idx(&[5, 4, 3], &(0..60).map(|i| i as u8).collect::<Vec<_>>());
        for _ in 0..5000 {
            let mut b = good.clone();
            match rng.below(4) {
                0 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(b.len() as u64) as usize;
                        b[i] ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    let i = rng.below(16) as usize;
                    b[i] = rng.below(256) as u8;
                }
                _ => b.extend((0..rng.below(8)).map(|_| rng.below(256) as u8)),
            }
            let ndims = 1 + rng.below(4) as usize;
            if let Ok(idx) = std::panic::catch_unwind(|| parse(&b, ndims)).expect("parser panicked") {
                assert_eq!(idx.dims.len(), ndims);
                assert_eq!(idx.dims.iter().product::<usize>(), idx.data.len());
            }
        }
    }
}
