//! Random-access byte sources a checkpoint can be read from.

use super::WeightsError;

/// Random-access, read-only bytes (a file, a buffer, chunks held by JS). `&self` so that one source can
/// serve several readers; implementations needing a cursor keep it behind interior mutability.
pub trait ByteSource {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`; a range beyond `len()` is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks that `offset..offset + len` lies within a source of `source_len` bytes.
pub(crate) fn check_range(offset: u64, len: usize, source_len: u64) -> Result<(), WeightsError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= source_len => Ok(()),
        _ => Err(WeightsError::ReadOutOfRange { offset, len, source_len }),
    }
}

/// Bytes already in memory: `Vec<u8>`, `Arc<[u8]>`, `&'static [u8]`, …
#[derive(Debug, Clone)]
pub struct MemorySource<B = Vec<u8>> {
    bytes: B,
}

impl<B: AsRef<[u8]>> MemorySource<B> {
    pub fn new(bytes: B) -> MemorySource<B> {
        MemorySource { bytes }
    }

    pub fn into_inner(self) -> B {
        self.bytes
    }
}

impl<B: AsRef<[u8]>> ByteSource for MemorySource<B> {
    fn len(&self) -> u64 {
        self.bytes.as_ref().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError> {
        let bytes = self.bytes.as_ref();
        check_range(offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize; // within a slice's length, so it fits usize
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }
}

/// A file read with positioned reads; never mapped or loaded whole.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct FileSource {
    #[cfg(unix)]
    file: std::fs::File,
    // Elsewhere reads need seek + read, so the cursor is shared behind a lock.
    #[cfg(not(unix))]
    file: std::sync::Mutex<std::fs::File>,
    len: u64,
    path: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<FileSource, WeightsError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |source| WeightsError::Io { what: path.display().to_string(), source };
        let file = std::fs::File::open(&path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        #[cfg(not(unix))]
        let file = std::sync::Mutex::new(file);
        Ok(FileSource { file, len, path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), WeightsError> {
        check_range(offset, buf.len(), self.len)?;
        let io_err = |source| WeightsError::Io { what: self.path.display().to_string(), source };
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, offset).map_err(io_err)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
            file.read_exact(buf).map_err(io_err)
        }
    }
}
