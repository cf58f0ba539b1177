//! Reading a file a user names (a trader file, a config file, a file in the
//! state directory) through a bound: never more than its limit in memory,
//! never blocked in `open` by a FIFO without a writer, never reading a
//! device such as `/dev/zero` forever. A pipe (`<(...)` in a shell, a named
//! FIFO) is read where the caller allows it, up to its limit and within
//! [`PIPE_TIMEOUT`] of silence.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A pipe that sends nothing for this long is given up on.
pub const PIPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a named file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Opening or reading failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// What the file is to the command (`trader file`, ...).
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why (shown in this error's message, so not chained after it).
        error: std::io::Error,
    },
    /// Not something this input can be read from.
    #[error("{what} {}: {why}", path.display())]
    Kind {
        /// What the file is to the command.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What it is instead, and what to give.
        why: String,
    },
    /// Longer than the limit.
    #[error("{what} {}: over the limit of {limit} bytes{hint}", path.display())]
    TooLarge {
        /// What the file is to the command.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The limit.
        limit: u64,
        /// What to do about it.
        hint: &'static str,
    },
}

impl InputError {
    /// What is wrong, without the file's name (for a message that names
    /// the file its own way).
    pub fn cause(&self) -> String {
        match self {
            Self::Io { error, .. } => error.to_string(),
            Self::Kind { why, .. } => why.clone(),
            Self::TooLarge { limit, hint, .. } => format!("over the limit of {limit} bytes{hint}"),
        }
    }
}

/// What may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Regular files only (files the engine wrote itself).
    Files,
    /// Regular files, and pipes and FIFOs (a shell's `<(...)`).
    FilesAndPipes,
}

/// Opens `path` for reading if it is a regular file, without blocking on
/// a FIFO: for inputs read a piece at a time by a loop that must not wait
/// (a replay), where a pipe or a device could hold it for ever.
pub fn open_regular(path: &Path, what: &'static str, instead: &str) -> Result<File, InputError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|source| InputError::Io {
            what,
            path: path.to_owned(),
            error: source,
        })?;
    let file_type = file
        .metadata()
        .map_err(|error| InputError::Io {
            what,
            path: path.to_owned(),
            error,
        })?
        .file_type();
    if file_type.is_file() {
        return Ok(file);
    }
    let is = if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else {
        "a FIFO or socket"
    };
    Err(InputError::Kind {
        what,
        path: path.to_owned(),
        why: format!("{is}, not a regular file: {instead}"),
    })
}

/// The bytes of `path`, at most `limit` of them; `what` names the file in
/// errors, `hint` says what to do past the limit.
pub fn read_bounded(
    path: &Path,
    limit: u64,
    what: &'static str,
    accept: Accept,
    hint: &'static str,
) -> Result<Vec<u8>, InputError> {
    let io = |error| InputError::Io {
        what,
        path: path.to_owned(),
        error,
    };
    let kind = |why: String| InputError::Kind {
        what,
        path: path.to_owned(),
        why,
    };
    // O_NONBLOCK: opening a FIFO that has no writer returns at once instead
    // of waiting for one (a regular file ignores the flag).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io)?;
    let file_type = file.metadata().map_err(io)?.file_type();
    let pipe = file_type.is_fifo() || file_type.is_socket();
    if file_type.is_dir() {
        return Err(kind("a directory, not a file".into()));
    }
    if file_type.is_char_device() || file_type.is_block_device() {
        return Err(kind(
            "a device, not a file: give the path of a regular file".into(),
        ));
    }
    if pipe && accept == Accept::Files {
        return Err(kind(
            "a FIFO or socket, not a regular file: remove it (the engine writes this file itself)"
                .into(),
        ));
    }
    let too_large = || InputError::TooLarge {
        what,
        path: path.to_owned(),
        limit,
        hint,
    };
    let mut bytes = Vec::new();
    if !pipe {
        (&file)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(too_large());
        }
        return Ok(bytes);
    }
    read_pipe(&file, limit, PIPE_TIMEOUT, &mut bytes).map_err(|e| match e {
        PipeError::Io(source) => io(source),
        PipeError::TooLarge => too_large(),
        PipeError::Silent(after) => kind(format!(
            "a pipe or FIFO that sent nothing for {} s (no writer?): write it whole, or give a regular file",
            after.as_secs()
        )),
    })?;
    Ok(bytes)
}

enum PipeError {
    Io(std::io::Error),
    TooLarge,
    Silent(Duration),
}

/// Reads a non-blocking pipe to its end, waiting at most `timeout` for
/// each chunk. It polls before it reads: a FIFO whose writer has not opened
/// it yet reads as ended, but polls as not ready (Linux reports no hang-up
/// to a reader that never had a writer), so a writer that comes a moment
/// later is waited for.
fn read_pipe(
    mut file: &File,
    limit: u64,
    timeout: Duration,
    bytes: &mut Vec<u8>,
) -> Result<(), PipeError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut chunk = [0u8; 64 * 1024];
    let mut quiet_since = Instant::now();
    loop {
        let left = timeout.saturating_sub(quiet_since.elapsed());
        if left.is_zero() {
            return Err(PipeError::Silent(timeout));
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        let wait =
            PollTimeout::try_from(left.min(Duration::from_millis(500))).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(PipeError::Io(e.into())),
        }
        match file.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if (bytes.len() + n) as u64 > limit {
                    return Err(PipeError::TooLarge);
                }
                bytes.extend_from_slice(&chunk[..n]);
                quiet_since = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock) => {}
            Err(e) => return Err(PipeError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path, limit: u64, accept: Accept) -> Result<Vec<u8>, String> {
        read_bounded(path, limit, "test file", accept, ": split it").map_err(|e| e.to_string())
    }

    #[test]
    fn files_are_read_to_their_limit_and_refused_past_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        assert_eq!(
            read(&path, 10, Accept::Files).expect("at the limit"),
            b"0123456789"
        );
        let e = read(&path, 9, Accept::Files).expect_err("past it");
        assert!(
            e.contains("over the limit of 9 bytes: split it") && e.contains("test file"),
            "{e}"
        );
        let e = read(dir.path(), 9, Accept::Files).expect_err("a directory");
        assert!(e.contains("a directory"), "{e}");
        let e = read(&dir.path().join("none"), 9, Accept::Files).expect_err("missing");
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn only_regular_files_open_where_a_loop_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        for (path, is) in [
            (fifo.as_path(), "a FIFO or socket"),
            (Path::new("/dev/zero"), "a device"),
            (dir.path(), "a directory"),
        ] {
            let e = open_regular(path, "replay file", "write it to a file")
                .expect_err("not regular")
                .to_string();
            assert!(
                e.contains(&format!("{is}, not a regular file: write it to a file")),
                "{e}"
            );
        }
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        assert!(open_regular(&file, "replay file", "").is_ok());
    }

    #[test]
    fn devices_are_refused_without_reading_them() {
        for dev in ["/dev/zero", "/dev/urandom", "/dev/null"] {
            let e = read(Path::new(dev), 1 << 20, Accept::FilesAndPipes).expect_err(dev);
            assert!(e.contains("a device, not a file"), "{e}");
        }
    }

    #[test]
    fn a_fifo_is_waited_for_its_writer_a_while_and_refused_where_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let e = read(&fifo, 100, Accept::Files).expect_err("files only");
        assert!(e.contains("a FIFO or socket, not a regular file"), "{e}");
        // A writer that opens it after the reader: waited for, read whole.
        let path = fifo.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(&path, b"workers = 3\n").expect("write the fifo");
        });
        let got = read(&fifo, 100, Accept::FilesAndPipes).expect("read");
        writer.join().expect("writer");
        assert_eq!(got, b"workers = 3\n");
        // No writer at all: given up on after the timeout, not waited on
        // for ever in open() or poll().
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(&fifo)
            .expect("open");
        let mut bytes = Vec::new();
        let silent = read_pipe(&file, 100, Duration::from_millis(200), &mut bytes);
        assert!(matches!(silent, Err(PipeError::Silent(_))));
    }

    #[test]
    fn a_pipe_is_read_to_its_end_within_its_limit() {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&reader)
        ));
        let feeder = std::thread::spawn(move || {
            let mut writer = writer;
            for _ in 0..3 {
                std::io::Write::write_all(&mut writer, &[b'x'; 40_000]).expect("write");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let got = read(&path, 120_000, Accept::FilesAndPipes).expect("whole");
        feeder.join().expect("feeder");
        assert_eq!(got.len(), 120_000);

        let (reader, writer) = std::io::pipe().expect("pipe");
        let path = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&reader)
        ));
        let feeder = std::thread::spawn(move || {
            let mut writer = writer;
            // Stops at the reader's close: past the limit it reads no more.
            while std::io::Write::write_all(&mut writer, &[b'y'; 4096]).is_ok() {}
        });
        let e = read(&path, 100_000, Accept::FilesAndPipes).expect_err("endless");
        drop(reader);
        feeder.join().expect("feeder");
        assert!(e.contains("over the limit of 100000 bytes"), "{e}");
    }
}
