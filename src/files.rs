//! Files that are complete or absent.
//!
//! Every file fmig writes goes to a temporary name in the same directory, is fsynced, and only
//! then renamed to its real name (and the directory fsynced), so a crash, a kill or a full disk
//! never leaves a truncated file under a name that looks finished. A file dropped before
//! [`OutputFile::finish`] is removed. While writing, the SHA-256 and size of the bytes that land
//! on disk are computed, so `metadata.json` can record them without reading the file again.
//! Hashing and `write(2)` run on a thread of their own, fed 256 KiB buffers, so they overlap
//! with whatever produces the bytes (an export spends a fifth of its time in them).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

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
    Plain(Background),
    Gzip(GzEncoder<Background>),
}

impl OutputFile {
    /// Starts `dir/name`, mode 0600 (export files hold e-mails and password hashes), gzip
    /// compressed when `gzip` is set (the name should then end in `.gz`).
    pub fn create(dir: &Path, name: &str, gzip: bool) -> Result<OutputFile> {
        let path = dir.join(name);
        let temp = dir.join(format!("{TEMP_PREFIX}{name}"));
        let file = create_private(&temp)
            .with_context(|| format!("could not create {}", temp.display()))?;
        let background = Background::start(file)
            .with_context(|| format!("could not start writing {}", temp.display()))?;
        let sink = if gzip {
            Sink::Gzip(GzEncoder::new(background, Compression::new(3)))
        } else {
            Sink::Plain(background)
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

    /// Flushes, fsyncs, renames into place and fsyncs the directory. If any of that fails
    /// (a full disk often shows only here, when the last buffers are written), the temporary
    /// file is removed, as when the file is dropped unfinished.
    pub fn finish(self) -> Result<Written> {
        self.finish_as(Place::Replace)
    }

    fn finish_as(mut self, place: Place) -> Result<Written> {
        let path = self.path.clone();
        let context = || format!("could not finish writing {}", path.display());
        let sink = self.sink.take().expect("finish called once");
        let written = (|| -> Result<(u64, [u8; 32])> {
            let background = match sink {
                Sink::Plain(b) => b,
                Sink::Gzip(gz) => gz.finish().with_context(context)?,
            };
            let (file, bytes, digest) = background.finish().with_context(context)?;
            file.sync_all().with_context(context)?;
            drop(file);
            match place {
                Place::Replace => fs::rename(&self.temp, &self.path).with_context(context)?,
                // A hard link refuses to overwrite, even a file that appeared meanwhile.
                Place::New => {
                    fs::hard_link(&self.temp, &self.path).with_context(context)?;
                    let _ = fs::remove_file(&self.temp);
                }
            }
            Ok((bytes, digest))
        })();
        let (bytes, digest) = written.inspect_err(|_| {
            let _ = fs::remove_file(&self.temp);
        })?;
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

/// How a finished file takes its name.
#[derive(Clone, Copy)]
enum Place {
    /// Replacing a file of that name.
    Replace,
    /// Only where no file has that name (`io::ErrorKind::AlreadyExists` otherwise).
    New,
}

/// Writes a small file atomically in one go (metadata, mappings, templates).
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<Written> {
    write_small(path, contents, Place::Replace)
}

/// [`write_atomically`], but never over an existing file, even one that appears while fmig
/// runs: the error then holds an `io::Error` of kind `AlreadyExists`.
pub fn write_new_atomically(path: &Path, contents: &[u8]) -> Result<Written> {
    write_small(path, contents, Place::New)
}

fn write_small(path: &Path, contents: &[u8], place: Place) -> Result<Written> {
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
    file.finish_as(place)
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

/// Whether `err` comes from a file system out of room: no space left (ENOSPC), a disk quota
/// (EDQUOT), or a file-size limit (EFBIG, e.g. `ulimit -f`).
pub fn is_out_of_space(err: &anyhow::Error) -> bool {
    #[cfg(unix)]
    const CODES: &[i32] = &[28, 27, 122]; // ENOSPC, EFBIG, EDQUOT (Linux numbering)
    #[cfg(not(unix))]
    const CODES: &[i32] = &[];
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error().is_some_and(|code| CODES.contains(&code)))
    })
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

/// Lower-case hex of `bytes` (how SHA-256 sums are written).
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Size of the buffers handed to the writing thread.
const BLOCK: usize = 256 * 1024;
/// Buffers queued for the writing thread at most (memory: about (QUEUE + 3) * BLOCK).
const QUEUE: usize = 2;

/// What the writing thread hands back: the file, its size and its SHA-256.
type Finished = (File, u64, [u8; 32]);

/// Hashes and writes a file on its own thread. Writes fill a buffer; full buffers go to the
/// thread through a bounded queue and come back to be reused. The thread stops at its first
/// error, which the next write, `flush` or [`Background::finish`] then returns.
struct Background {
    buffer: Vec<u8>,
    sender: Option<SyncSender<Vec<u8>>>,
    recycled: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<Finished>>>,
}

impl Background {
    fn start(file: File) -> io::Result<Background> {
        let (sender, blocks) = sync_channel::<Vec<u8>>(QUEUE);
        let (give_back, recycled) = sync_channel::<Vec<u8>>(QUEUE + 2);
        let thread = std::thread::Builder::new()
            .name("fmig-file-writer".into())
            .spawn(move || {
                let mut hashing = Hashing::new(file);
                for mut block in blocks {
                    hashing.write_all(&block)?;
                    block.clear();
                    let _ = give_back.try_send(block);
                }
                Ok(hashing.into_parts())
            })?;
        Ok(Background {
            buffer: Vec::with_capacity(BLOCK),
            sender: Some(sender),
            recycled,
            thread: Some(thread),
        })
    }

    /// Hands the buffer to the thread (if it holds anything).
    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let next = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK));
        let full = std::mem::replace(&mut self.buffer, next);
        let sent = match &self.sender {
            Some(sender) => sender.send(full).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread has stopped: it failed, and its error says why.
        self.sender = None;
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(io::Error::other("the file writer stopped early")),
        }
    }

    fn join(&mut self) -> io::Result<Finished> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the file writer thread panicked"))),
            None => Err(io::Error::other("the file writer already stopped")),
        }
    }

    /// Writes what is left and returns the file, the byte count and the SHA-256.
    fn finish(mut self) -> io::Result<Finished> {
        self.send_buffer()?;
        self.sender = None; // ends the thread's loop
        self.join()
    }
}

impl Write for Background {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + buf.len() > BLOCK {
            self.send_buffer()?;
        }
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// Hands the buffered bytes to the thread; [`Background::finish`] waits for them.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Unfinished: the thread ends when the queue closes; its file is closed before
        // `OutputFile` removes the temporary name.
        self.sender = None;
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
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
    fn a_new_file_never_replaces_one_that_exists() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fmig.toml");
        let written = write_new_atomically(&path, b"first").unwrap();
        assert_eq!(written.bytes, 5);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_new_atomically(&path, b"second").unwrap_err();
        assert!(
            err.chain()
                .filter_map(|c| c.downcast_ref::<io::Error>())
                .any(|e| e.kind() == io::ErrorKind::AlreadyExists),
            "{err:#}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"first");
        write_atomically(&path, b"third").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"third");
        // No temporary file is left behind either way.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("fmig.toml")]);
    }

    #[test]
    fn large_files_arrive_whole_in_order_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = OutputFile::create(dir.path(), "big.json", false).unwrap();
        let mut expected = Vec::new();
        // Small and large writes, some bigger than a block, crossing many block boundaries.
        for i in 0..20_000u32 {
            let piece = if i % 5_000 == 0 {
                vec![b'a' + (i % 26) as u8; 3 * BLOCK / 2]
            } else {
                format!("{i:>7},").into_bytes()
            };
            f.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        f.flush().unwrap();
        let written = f.finish().unwrap();
        assert_eq!(fs::read(&written.path).unwrap(), expected);
        assert_eq!(written.bytes, expected.len() as u64);
        assert_eq!(written.sha256, hex(&Sha256::digest(&expected)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failed_write_on_the_thread_is_reported() {
        // /dev/full fails every write with ENOSPC, like a full disk.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut background = Background::start(full).unwrap();
        let block = vec![b'x'; BLOCK];
        let mut result = Ok(());
        for _ in 0..(QUEUE + 4) {
            result = background.write_all(&block);
            if result.is_err() {
                break;
            }
        }
        let error = match result {
            Err(e) => e,
            Ok(()) => background.finish().unwrap_err(),
        };
        assert_eq!(error.raw_os_error(), Some(28), "{error}"); // ENOSPC
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn out_of_space_is_recognised_through_context() {
        let full: Result<()> = Err(io::Error::from_raw_os_error(28)).context("could not write x");
        let full = full.context("exporting x failed").unwrap_err();
        assert!(is_out_of_space(&full));
        let too_large = anyhow::Error::new(io::Error::from_raw_os_error(27));
        assert!(is_out_of_space(&too_large));
        let denied = anyhow::Error::new(io::Error::from_raw_os_error(13)).context("x");
        assert!(!is_out_of_space(&denied));
        assert!(!is_out_of_space(&anyhow::anyhow!(
            "No space left on device"
        )));
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
