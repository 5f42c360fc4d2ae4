//! TensorBoard event files, written directly (no crate for the format fits: the one on
//! crates.io, tensorboard-rs, is unmaintained, on protobuf 2 and image 0.23, and panics on I/O
//! errors). The format is TensorFlow's record framing (length, masked CRC-32C of the length,
//! payload, masked CRC-32C of the payload) around `Event` protocol buffers (`proto`).
//!
//! Each process that writes a run's events opens a file of its own, named to sort after
//! every event file already in the directory (TensorBoard reads a run's files in name order),
//! that begins with the file version and a `SessionLog.START` at the step the process starts
//! from. After a restart (a resume, or a rollback within a process) the readers drop what the
//! earlier session wrote at that step or later, so the curves continue from the checkpoint
//! as one line: TensorBoard's Python reader purges on the START (file version 2), its data
//! server drops a tag's points at or after any step that comes again.

pub mod proto;
pub mod sink;

use anyhow::{Context, Result};
use prost::Message;
use proto::{Event, SessionLog, Summary, Value, ValueKind, What};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The file version TensorBoard's writers put first; 2 turns on the purge at a START.
pub const FILE_VERSION: &str = "brain.Event:2";
/// The prefix of every event file's name (TensorBoard reads files whose name holds "tfevents").
pub const FILE_PREFIX: &str = "events.out.tfevents.";
const WRITER: &str = "gandist";
/// The tag of the sample grids (the images of samples/step-N.png).
pub const SAMPLES_TAG: &str = "samples";

/// TensorFlow's masked CRC-32C (Castagnoli): the CRC rotated right by 15 bits plus a
/// constant, so that a CRC of data that holds CRCs stays well distributed.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One record: the payload's length (u64, little-endian), the length's masked CRC, the
/// payload, the payload's masked CRC (u32s, little-endian).
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

/// An open event file.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The seconds field of an event file's name ("events.out.tfevents.1733234567.host...").
fn file_seconds(name: &str) -> Option<u64> {
    name.strip_prefix(FILE_PREFIX)?.split('.').next()?.parse().ok()
}

impl EventWriter {
    /// A new event file in `dir` (created if needed) whose first events are the file version
    /// and a START at `start_step`: the first step this process writes.
    pub fn create(dir: &Path, start_step: u64) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // The name's seconds come after every existing file's, so that name order is
        // writing order even for a restart within the same second or a clock that went back.
        let newest = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .flatten()
            .filter_map(|e| file_seconds(&e.file_name().to_string_lossy()))
            .max();
        let secs = (now() as u64).max(newest.map_or(0, |s| s + 1));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "localhost".to_string() } else { host.replace(['/', '.'], "-") };
        let path = dir.join(format!("{FILE_PREFIX}{secs:010}.{host}.{}.gandist", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create TensorBoard event file {}", path.display()))?;
        let mut w = EventWriter { file: BufWriter::new(file), path };
        w.write(Event {
            wall_time: now(),
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
            source_metadata: Some(proto::SourceMetadata { writer: WRITER.into() }),
        })?;
        w.restart(start_step)?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, event: Event) -> Result<()> {
        let bytes = frame(&event.encode_to_vec());
        self.file.write_all(&bytes).with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// A (re)start at `step`: readers drop every point an earlier session wrote at `step` or
    /// later.
    pub fn restart(&mut self, step: u64) -> Result<()> {
        self.write(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::SessionLog(SessionLog { status: proto::SESSION_START, msg: format!("gandist starts at step {step}") })),
            source_metadata: None,
        })
    }

    /// Scalars at `step`, in one event (stored as float32, as TensorBoard reads them).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<()> {
        let value = values.iter().map(|(tag, v)| Value { tag: tag.to_string(), value: Some(ValueKind::SimpleValue(*v as f32)) }).collect();
        self.write(Event { wall_time: now(), step: step as i64, what: Some(What::Summary(Summary { value })), source_metadata: None })
    }

    /// An image at `step`: the bytes of a PNG of `width` x `height` with `channels` (1 or 3).
    pub fn image(&mut self, tag: &str, step: u64, png: &[u8], width: u32, height: u32, channels: u32) -> Result<()> {
        let image = proto::Image { height: height as i32, width: width as i32, colorspace: channels as i32, encoded_image_string: png.to_vec() };
        let value = vec![Value { tag: tag.into(), value: Some(ValueKind::Image(image)) }];
        self.write(Event { wall_time: now(), step: step as i64, what: Some(What::Summary(Summary { value })), source_metadata: None })
    }

    /// Hands everything written so far to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The scalars of a scalar-log record, as TensorBoard tags: every number under its key, and
/// booleans as 0 or 1; the step is the x axis, not a scalar, and text (a detector's state)
/// has no place on a curve.
pub fn record_scalars(record: &serde_json::Map<String, serde_json::Value>) -> Vec<(&str, f64)> {
    record
        .iter()
        .filter(|(k, _)| k.as_str() != crate::scalar_log::STEP)
        .filter_map(|(k, v)| match v {
            serde_json::Value::Number(n) => n.as_f64().map(|x| (k.as_str(), x)),
            serde_json::Value::Bool(b) => Some((k.as_str(), if *b { 1.0 } else { 0.0 })),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value (RFC 3720: "123456789" gives 0xE3069283), and masked CRCs as
    /// tensorboard's own Python implementation computes them
    /// (tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c, 2.21.0).
    #[test]
    fn masked_crcs_match_tensorboards() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(masked_crc32c(&16u64.to_le_bytes()), 0x18fe_fb95);
    }

    /// A written file parses back record by record: lengths and CRCs as the framing says,
    /// the events in order (file version, START, scalars as float32, an image).
    #[test]
    fn records_frame_events_that_decode() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path(), 4).unwrap();
        w.scalars(5, &[("d_loss", 0.1), ("g_loss", -2.5)]).unwrap();
        w.image("samples", 5, b"\x89PNG", 3, 2, 1).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut events = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc32c(len_bytes));
            let payload = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc32c(payload));
            events.push(Event::decode(payload).unwrap());
            at += 16 + len;
        }
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
        assert!(matches!(&events[1].what, Some(What::SessionLog(s)) if s.status == proto::SESSION_START) && events[1].step == 4);
        let Some(What::Summary(s)) = &events[2].what else { panic!("{:?}", events[2]) };
        assert_eq!(s.value[0].value, Some(ValueKind::SimpleValue(0.1f64 as f32)));
        assert_eq!((events[2].step, s.value[1].tag.as_str()), (5, "g_loss"));
        assert!(matches!(&events[3].what, Some(What::Summary(s)) if matches!(&s.value[0].value, Some(ValueKind::Image(i)) if i.width == 3 && i.height == 2)));
    }

    /// A second writer's file sorts after the first's, even within the same second.
    #[test]
    fn later_files_sort_later() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path(), 0).unwrap();
        let b = EventWriter::create(dir.path(), 3).unwrap();
        let c = EventWriter::create(dir.path(), 5).unwrap();
        let names: Vec<String> = [&a, &b, &c].iter().map(|w| w.path().file_name().unwrap().to_string_lossy().to_string()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| n.starts_with(FILE_PREFIX)));
    }

    #[test]
    fn scalars_of_a_record() {
        let r: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"step": 3, "d_loss": 0.5, "g_clipped": true, "d_health": "healthy", "d_grad_norm.conv1": 2}"#).unwrap();
        let mut s = record_scalars(&r);
        s.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(s, vec![("d_grad_norm.conv1", 2.0), ("d_loss", 0.5), ("g_clipped", 1.0)]);
    }
}
