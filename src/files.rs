//! Files that are complete or absent.
//!
//! Every file fmig writes goes to a temporary name in the same directory, is fsynced, and only
//! then renamed to its real name (and the directory fsynced), so a crash, a kill or a full disk
//! never leaves a truncated file under a name that looks finished. A file dropped before
//! [`OutputFile::finish`] is removed. While writing, the SHA-256 and size of the bytes that land
//! on disk are computed, so `metadata.json` can record them without reading the file again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// Prefix of temporary files, so a later run can recognise and remove leftovers.
pub const TEMP_PREFIX: &str = ".fmig-tmp.";

/// Size and SHA-256 of a finished file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// A file being written under a temporary name.
pub struct OutputFile {
    temp: PathBuf,
    path: PathBuf,
    sink: Option<Sink>,
}

enum Sink {
    Plain(Hashing<BufWriter<File>>),
    Gzip(GzEncoder<Hashing<BufWriter<File>>>),
}

impl OutputFile {
    /// Starts `dir/name`, mode 0600 (export files hold e-mails and password hashes), gzip
    /// compressed when `gzip` is set (the name should then end in `.gz`).
    pub fn create(dir: &Path, name: &str, gzip: bool) -> Result<OutputFile> {
        let path = dir.join(name);
        let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
        let file = create_private(&temp)
            .with_context(|| format!("could not create {}", temp.display()))?;
        let hashing = Hashing::new(BufWriter::with_capacity(256 * 1024, file));
        let sink = if gzip {
            Sink::Gzip(GzEncoder::new(hashing, Compression::new(3)))
        } else {
            Sink::Plain(hashing)
        };
        Ok(OutputFile {
            temp,
            path,
            sink: Some(sink),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, fsyncs, renames into place and fsyncs the directory.
    pub fn finish(mut self) -> Result<Written> {
        let path = self.path.clone();
        let context = || format!("could not finish writing {}", path.display());
        let hashing = match self.sink.take().expect("finish called once") {
            Sink::Plain(h) => h,
            Sink::Gzip(gz) => gz.finish().with_context(context)?,
        };
        let (buffered, bytes, digest) = hashing.into_parts();
        let file = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(context)?;
        file.sync_all().with_context(context)?;
        drop(file);
        fs::rename(&self.temp, &self.path).with_context(context)?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        Ok(Written {
            path: self.path.clone(),
            bytes,
            sha256: hex(&digest),
        })
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.sink.as_mut() {
            Some(Sink::Plain(w)) => w.write(buf),
            Some(Sink::Gzip(w)) => w.write(buf),
            None => Err(io::Error::other("file already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.sink.as_mut() {
            Some(Sink::Plain(w)) => w.flush(),
            Some(Sink::Gzip(w)) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.sink.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes a small file atomically in one go (metadata, mappings, templates).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<Written> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut file = OutputFile::create(dir, name, false)?;
    file.write_all(contents)
        .with_context(|| format!("could not write {}", path.display()))?;
    file.finish()
}

/// Creates (truncating) a file readable only by its owner.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Makes a rename durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("could not sync directory {}", dir.display()))?;
    Ok(())
}

/// SHA-256 of a whole file, streamed.
pub fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut file =
        File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut hashing = Hashing::new(io::sink());
    let bytes = io::copy(&mut file, &mut hashing)
        .with_context(|| format!("could not read {}", path.display()))?;
    Ok((bytes, hex(&hashing.into_parts().2)))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    bytes: u64,
    digest: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            bytes: 0,
            digest: Sha256::new(),
        }
    }

    fn into_parts(self) -> (W, u64, [u8; 32]) {
        (self.inner, self.bytes, self.digest.finalize().into())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_files_appear_whole_and_dropped_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = OutputFile::create(dir.path(), "a.json", false).unwrap();
        f.write_all(b"[\n]\n").unwrap();
        assert!(!dir.path().join("a.json").exists(), "visible before finish");
        let written = f.finish().unwrap();
        assert_eq!(fs::read(dir.path().join("a.json")).unwrap(), b"[\n]\n");
        assert_eq!(written.bytes, 4);
        assert_eq!(
            sha256_file(&written.path).unwrap(),
            (4, written.sha256.clone())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&written.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut g = OutputFile::create(dir.path(), "b.json", false).unwrap();
        g.write_all(b"[\n{\"half\":").unwrap();
        drop(g);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"], "a dropped file left something behind");
    }

    #[test]
    fn gzip_hashes_the_compressed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = OutputFile::create(dir.path(), "t.json.gz", true).unwrap();
        f.write_all(b"[\n{\"a\":1}\n]\n").unwrap();
        let written = f.finish().unwrap();
        let on_disk = fs::read(&written.path).unwrap();
        assert_eq!(written.bytes, on_disk.len() as u64);
        assert_eq!(sha256_file(&written.path).unwrap().1, written.sha256);
        let mut text = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&on_disk[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "[\n{\"a\":1}\n]\n");
    }
}
