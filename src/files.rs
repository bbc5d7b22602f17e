//! Reading the files gatehouse must read (the config itself, certificates, keys, CA
//! bundles, JWKS files; secret files with [`read_secret_bounded`]) with a size bound: a
//! path pointing at a device (`/dev/urandom`), a FIFO, a directory or a runaway file
//! must fail with a message, not make `check` (or a reload) read forever or exhaust
//! memory.
//!
//! The file is opened without blocking (a FIFO would otherwise wait for a writer), the
//! opened handle is checked (so a path swapped between a check and the open changes
//! nothing), and at most [`MAX_FILE_BYTES`] + 1 bytes are read.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest file gatehouse reads (1 MiB): far above any real config, certificate chain,
/// key or JWKS document.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// What kind of thing a path is, for messages.
fn kind(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Why a file was not read. Displayed without the path: callers say which file.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The path leads (after symlinks) to a directory, device, FIFO or socket.
    NotRegular(&'static str),
    /// Larger than the limit (in bytes).
    TooLarge(u64),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge(max) if *max == MAX_FILE_BYTES => write!(
                f,
                "it is larger than 1 MiB, more than any file gatehouse reads"
            ),
            ReadError::TooLarge(max) => write!(f, "it is larger than {max} bytes"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a whole file that must be a regular file (after following symlinks) of at most
/// [`MAX_FILE_BYTES`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    read_bounded_max(path, MAX_FILE_BYTES)
}

/// [`read_bounded`] with another limit.
pub fn read_bounded_max(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge(max));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // Bounded even if the file grows after the check.
    (&file as &File)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(out)
}

/// Reads at most [`MAX_FILE_BYTES`] of a secret file (`{ file = "..." }`), whatever
/// kind of file it is: a secret agent may hand a secret over a FIFO or a device, so the
/// open blocks as a plain read would and no file type is refused, but more than 1 MiB is
/// (`/dev/urandom` fails at once instead of being read forever).
pub fn read_secret_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    let mut out = Vec::new();
    (&file as &File)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(ReadError::Io)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(MAX_FILE_BYTES));
    }
    Ok(out)
}

/// Line and column (1-based, the column in characters) of byte `offset` of `text`
/// (a char boundary; clamped to the text).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// Config bytes as text; `Err` holds the line and column of the first byte that is not
/// UTF-8, counted in the valid text before it.
pub fn utf8(bytes: &[u8]) -> Result<&str, (usize, usize)> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = e.valid_up_to();
        // The prefix up to the first bad byte is valid by definition.
        let prefix = std::str::from_utf8(&bytes[..good]).unwrap_or("");
        line_col(prefix, good)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(p: &Path) -> String {
        read_bounded(p).unwrap_err().to_string()
    }

    #[test]
    fn regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.pem");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_bounded(&p).unwrap(), b"hello");
        // Through a symlink too.
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(read_bounded(&link).unwrap(), b"hello");
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            err(Path::new("/dev/urandom")),
            "it is a character device, not a regular file"
        );
        assert!(err(Path::new("/dev/zero")).contains("not a regular file"));
        assert!(err(dir.path()).contains("a directory"));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A plain open would wait for a writer forever.
        assert!(err(&fifo).contains("a FIFO"));
        let link = dir.path().join("rand");
        std::os::unix::fs::symlink("/dev/urandom", &link).unwrap();
        assert!(err(&link).contains("character device"));
        assert!(matches!(
            read_bounded(&dir.path().join("none")),
            Err(ReadError::Io(_))
        ));
    }

    #[test]
    fn size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'a'; 11]).unwrap();
        assert!(read_bounded_max(&p, 11).is_ok());
        assert!(matches!(
            read_bounded_max(&p, 10),
            Err(ReadError::TooLarge(10))
        ));
        std::fs::write(&p, vec![b'a'; MAX_FILE_BYTES as usize]).unwrap();
        assert!(read_bounded(&p).is_ok());
        std::fs::write(&p, vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(err(&p).contains("larger than 1 MiB"));
    }

    #[test]
    fn secrets_are_bounded_but_may_be_any_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.key");
        std::fs::write(&p, b"k").unwrap();
        assert_eq!(read_secret_bounded(&p).unwrap(), b"k");
        assert!(matches!(
            read_secret_bounded(Path::new("/dev/urandom")),
            Err(ReadError::TooLarge(_))
        ));
        assert_eq!(read_secret_bounded(Path::new("/dev/null")).unwrap(), b"");
    }

    #[test]
    fn first_bad_utf8_byte_is_located() {
        assert_eq!(utf8(b"ok\n").unwrap(), "ok\n");
        assert_eq!(utf8(b"\xff"), Err((1, 1)));
        assert_eq!(utf8(b"a = 1\nb = \"x\xc3\x28\""), Err((2, 7)));
        // Columns count characters: "\u{e9}y" is two before the bad byte on line 3.
        assert_eq!(utf8(b"x\n\n\xc3\xa9y\xfe"), Err((3, 3)));
    }
}
