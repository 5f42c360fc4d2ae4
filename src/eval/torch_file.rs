//! Reads a PyTorch state dict written by `torch.save`, as it is, in either of its two formats:
//! the zip archive of torch >= 1.6 (read by libtorch itself, through tch) and the older
//! "legacy" stream (five pickles, then each storage's bytes), which is the format of the
//! Inception weights that pytorch-fid downloads (`pt_inception-2015-12-05-6726825d.pth`, saved
//! in 2019). libtorch has no reader for the legacy stream, so this module holds a small pickle
//! machine for it: only the opcodes that `torch.save` emits for a dict of tensors, and only the
//! globals it names (tensor rebuilds, storage types, `OrderedDict`); anything else is refused,
//! so that a weight file can never run code or allocate without bound.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The first bytes of a legacy `torch.save` stream: pickle protocol 2, then the magic number
/// 0x1950a86a20f9469cfc6c as a 10-byte LONG1, then STOP.
const LEGACY_MAGIC: [u8; 15] = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
/// The protocol version `torch.save` writes after the magic number.
const LEGACY_PROTOCOL: i64 = 1001;
/// Local file header of a zip archive.
const ZIP_MAGIC: [u8; 4] = *b"PK\x03\x04";

/// The named tensors of a `torch.save`d state dict, in the file's order, on the CPU.
pub fn load_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(&ZIP_MAGIC) {
        let mut named = Tensor::loadz_multi(path).with_context(|| {
            format!("{}: a zip archive that libtorch cannot read as a torch.save state dict (truncated or not a PyTorch file)", path.display())
        })?;
        named.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(named);
    }
    if bytes.starts_with(&LEGACY_MAGIC) {
        return read_legacy(&bytes).with_context(|| format!("{}: not a readable legacy torch.save state dict (truncated or corrupted)", path.display()));
    }
    bail!(
        "{} is not a PyTorch state dict: it starts with neither a zip header (torch.save since torch 1.6) nor the legacy torch.save magic number",
        path.display()
    )
}

/// A value on the pickle machine's stack.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A global the machine knows by name (module, name).
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
    Mark,
}

#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    kind: Kind,
    numel: i64,
}

#[derive(Debug, Clone)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// Element type and size of a `torch.*Storage` class.
fn storage_kind(name: &str) -> Option<(Kind, usize)> {
    Some(match name {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// Reads pickles out of a byte slice, one after another.
struct Pickles<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Pickles<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).with_context(|| format!("the file ends early, at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').context("a GLOBAL opcode without its newline")?;
        let s = String::from_utf8(rest[..end].to_vec()).context("a GLOBAL name that is not UTF-8")?;
        self.pos += end + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(String::from_utf8(self.take(n)?.to_vec()).context("a string that is not UTF-8")?))
    }

    /// Runs the machine over one pickle (up to its STOP) and returns the value it built.
    fn next(&mut self) -> Result<Value> {
        let mut stack: Vec<Value> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        let pop = |stack: &mut Vec<Value>| stack.pop().context("pickle stack underflow");
        let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
            let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).context("pickle: no MARK on the stack")?;
            let items = stack.split_off(at + 1);
            stack.pop();
            Ok(items)
        };
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        bail!("pickle protocol {proto} at byte {at}: expected at most 5");
                    }
                }
                0x95 => {
                    // FRAME: an 8-byte length; frames only group opcodes.
                    self.take(8)?;
                }
                b'.' => return pop(&mut stack),
                b'(' => stack.push(Value::Mark),
                b'}' => stack.push(Value::Dict(Vec::new())),
                b']' => stack.push(Value::List(Vec::new())),
                b')' => stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = pop_mark(&mut stack)?;
                    stack.push(Value::Tuple(items));
                }
                0x85 | 0x86 | 0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        bail!("pickle stack underflow at byte {at}");
                    }
                    let items = stack.split_off(stack.len() - n);
                    stack.push(Value::Tuple(items));
                }
                b'N' => stack.push(Value::None),
                0x88 => stack.push(Value::Bool(true)),
                0x89 => stack.push(Value::Bool(false)),
                b'J' => stack.push(Value::Int(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as i64)),
                b'K' => {
                    let v = self.u8()?;
                    stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        bail!("pickle: a {n}-byte integer at byte {at}: expected at most 8 bytes");
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    // Sign-extend from the top byte.
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v |= -1i64 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    stack.push(Value::Float)
                },
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    stack.push(v);
                }
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.text(n)?;
                    stack.push(v);
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.text(n)?;
                    stack.push(v);
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    memo.insert(k, stack.last().context("pickle: BINPUT on an empty stack")?.clone());
                }
                b'r' => {
                    let k = self.u32()?;
                    memo.insert(k, stack.last().context("pickle: LONG_BINPUT on an empty stack")?.clone());
                }
                0x94 => {
                    let k = memo.len() as u32;
                    memo.insert(k, stack.last().context("pickle: MEMOIZE on an empty stack")?.clone());
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    stack.push(memo.get(&k).with_context(|| format!("pickle: memo entry {k} read before it was written"))?.clone());
                }
                b'j' => {
                    let k = self.u32()?;
                    stack.push(memo.get(&k).with_context(|| format!("pickle: memo entry {k} read before it was written"))?.clone());
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    stack.push(global(module, name)?);
                }
                0x93 => {
                    let name = pop(&mut stack)?;
                    let module = pop(&mut stack)?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => stack.push(global(m, n)?),
                        _ => bail!("pickle: STACK_GLOBAL without two strings at byte {at}"),
                    }
                }
                b'R' => {
                    let args = pop(&mut stack)?;
                    let callable = pop(&mut stack)?;
                    stack.push(reduce(callable, args)?);
                }
                b'Q' => {
                    let pid = pop(&mut stack)?;
                    stack.push(persistent(pid)?);
                }
                b'b' => {
                    // BUILD: an object's state (an OrderedDict's `_metadata`); not needed.
                    pop(&mut stack)?;
                }
                b's' => {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => bail!("pickle: SETITEM on something other than a dict at byte {at}"),
                    }
                }
                b'u' => {
                    let items = pop_mark(&mut stack)?;
                    if items.len() % 2 != 0 {
                        bail!("pickle: SETITEMS with an odd number of items at byte {at}");
                    }
                    match stack.last_mut() {
                        Some(Value::Dict(d)) => {
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        _ => bail!("pickle: SETITEMS on something other than a dict at byte {at}"),
                    }
                }
                b'a' => {
                    let v = pop(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => bail!("pickle: APPEND on something other than a list at byte {at}"),
                    }
                }
                b'e' => {
                    let items = pop_mark(&mut stack)?;
                    match stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => bail!("pickle: APPENDS on something other than a list at byte {at}"),
                    }
                }
                other => bail!("pickle opcode 0x{other:02x} at byte {at} is not one that torch.save writes for a state dict"),
            }
        }
    }
}

/// The globals a state dict may name; any other is refused.
fn global(module: String, name: String) -> Result<Value> {
    let known = match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => true,
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => true,
        ("torch", n) => storage_kind(n).is_some(),
        _ => false,
    };
    if !known {
        bail!("the file names the Python global {module}.{name}, which a state dict of tensors does not need: refused");
    }
    Ok(Value::Global(module, name))
}

fn int(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        _ => bail!("{what}: expected an integer, found {v:?}"),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|x| int(x, what)).collect(),
        _ => bail!("{what}: expected a tuple of integers, found {v:?}"),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = callable else { bail!("pickle: REDUCE on something that is not a known global") };
    let Value::Tuple(args) = args else { bail!("pickle: {module}.{name} called without an argument tuple") };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", _) => {
            // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])
            let storage = match args.first() {
                Some(Value::Storage(s)) => s.clone(),
                _ => bail!("{module}.{name}: the first argument is not a storage"),
            };
            if args.len() < 4 {
                bail!("{module}.{name}: {} arguments, expected at least 4", args.len());
            }
            let offset = int(&args[1], "storage offset")?;
            let size = ints(&args[2], "tensor size")?;
            let stride = ints(&args[3], "tensor stride")?;
            if size.len() != stride.len() || size.iter().chain(&stride).any(|&d| d < 0) || offset < 0 {
                bail!("{module}.{name}: size {size:?}, stride {stride:?} and offset {offset} do not describe a tensor");
            }
            // The last element the view reaches must lie inside the storage.
            if size.iter().all(|&d| d > 0) {
                let last = size.iter().zip(&stride).try_fold(offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| x.checked_add(acc)));
                if last.is_none_or(|l| l >= storage.numel) {
                    bail!("tensor of size {size:?}, stride {stride:?}, offset {offset} reaches past its storage of {} elements", storage.numel);
                }
            }
            Ok(Value::Tensor(TensorRef { storage, offset, size, stride }))
        }
        _ => bail!("pickle: {module}.{name} cannot be called here"),
    }
}

/// A persistent id: ('storage', torch.XStorage, key, location, numel[, view metadata]).
fn persistent(pid: Value) -> Result<Value> {
    let Value::Tuple(t) = pid else { bail!("pickle: a persistent id that is not a tuple") };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(_, class), Value::Str(key), _location, numel, ..] if tag == "storage" => {
            let (kind, _) = storage_kind(class).with_context(|| format!("storage class {class} is not one torch.save writes"))?;
            let numel = int(numel, "storage size")?;
            if numel < 0 {
                bail!("storage {key} has a negative size {numel}");
            }
            Ok(Value::Storage(StorageRef { key: key.clone(), kind, numel }))
        }
        _ => bail!("pickle: a persistent id that is not a storage reference: {t:?}"),
    }
}

/// The legacy stream: magic number, protocol version, system info, the state dict, the list
/// of storage keys; then, for each key in that order, its element count (int64) and its bytes.
fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut p = Pickles { bytes, pos: LEGACY_MAGIC.len() };
    let version = int(&p.next()?, "protocol version")?;
    if version != LEGACY_PROTOCOL {
        bail!("legacy protocol version {version}, expected {LEGACY_PROTOCOL}");
    }
    if let Value::Dict(info) = p.next()? {
        let little = info.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == "little_endian"));
        if matches!(little, Some((_, Value::Bool(false)))) {
            bail!("the file was written on a big-endian machine: not supported");
        }
    }
    let entries = match p.next()? {
        Value::Dict(d) => d,
        other => bail!("the saved object is not a dict of tensors (found {})", kind_name(&other)),
    };
    let keys = match p.next()? {
        Value::List(k) => k,
        _ => bail!("the storage key list is missing"),
    };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut wanted: HashMap<String, (Kind, i64)> = HashMap::new();
    for (_, v) in &entries {
        if let Value::Tensor(t) = v {
            wanted.insert(t.storage.key.clone(), (t.storage.kind, t.storage.numel));
        }
    }
    for k in keys {
        let Value::Str(key) = k else { bail!("a storage key that is not a string") };
        let numel = i64::from_le_bytes(p.take(8)?.try_into().expect("8 bytes"));
        let (kind, want) = *wanted.get(&key).with_context(|| format!("storage {key} is listed but no tensor uses it"))?;
        if numel != want {
            bail!("storage {key} holds {numel} elements, its tensors expect {want}");
        }
        let elt = kind.elt_size_in_bytes();
        let data = p.take((numel as usize).checked_mul(elt).context("storage size overflows")?)?;
        storages.insert(key, Tensor::f_from_data_size(data, &[numel], kind)?);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Value::Str(name) = k else { bail!("a state dict key that is not a string") };
        let Value::Tensor(t) = v else { bail!("entry {name} is not a tensor (found {})", kind_name(&v)) };
        let storage = storages.get(&t.storage.key).with_context(|| format!("tensor {name}: its storage {} is missing from the file", t.storage.key))?;
        let tensor = storage.f_as_strided(t.size.as_slice(), t.stride.as_slice(), t.offset)?.contiguous();
        out.push((name, tensor));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an integer",
        Value::Float => "a float",
        Value::Str(_) => "a string",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global(..) => "a class",
        Value::Storage(_) => "a storage",
        Value::Tensor(_) => "a tensor",
        Value::Mark => "a mark",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_files_and_unknown_globals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.pth");
        std::fs::write(&p, b"<html>not found</html>").unwrap();
        let e = format!("{:#}", load_state_dict(&p).unwrap_err());
        assert!(e.contains("is not a PyTorch state dict"), "{e}");
        // A legacy header followed by a pickle that calls os.system.
        let mut b = LEGACY_MAGIC.to_vec();
        b.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
        b.extend_from_slice(&[0x80, 0x02, b'}', b'.']);
        b.extend_from_slice(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.");
        std::fs::write(&p, &b).unwrap();
        let e = format!("{:#}", load_state_dict(&p).unwrap_err());
        assert!(e.contains("os.system") && e.contains("refused"), "{e}");
        // Truncated after the magic number.
        std::fs::write(&p, &LEGACY_MAGIC[..]).unwrap();
        let e = format!("{:#}", load_state_dict(&p).unwrap_err());
        assert!(e.contains("the file ends early"), "{e}");
    }

    #[test]
    fn long1_integers_sign_extend() {
        // LONG1 of 2 bytes 0xff 0xff = -1; of 2 bytes 0x01 0x80 = -32767.
        let mut p = Pickles { bytes: b"\x80\x02\x8a\x02\xff\xff.", pos: 0 };
        assert!(matches!(p.next().unwrap(), Value::Int(-1)));
        let mut p = Pickles { bytes: b"\x8a\x02\x01\x80.", pos: 0 };
        assert!(matches!(p.next().unwrap(), Value::Int(-32767)));
    }
}
