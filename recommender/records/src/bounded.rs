//! Bounded reading of input files: every reader of user-supplied files (record JSON lines,
//! cluster snapshots, policy files) goes through here, so that no input, not even
//! `/dev/zero`, can make `leash` hang on a FIFO, grow without limit or scan a line twice.
//!
//! - A line may be at most [`Limits::max_line`] bytes (16 MiB by default).
//! - A file may be at most [`Limits::max_file`] bytes (4 GiB by default; the environment
//!   variable [`MAX_INPUT_ENV`] changes it).
//! - Files found by walking a directory must be regular files: [`open`] checks the type
//!   without blocking on a FIFO that has no writer.
//!
//! Reading is in chunks, and each byte is searched for a line end once, so a line without a
//! newline costs time linear in its length.

use std::{
    fs::File,
    io::Read,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// The longest line accepted, in bytes, unless [`Limits`] says otherwise.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;
/// The largest input file accepted, in bytes, unless [`MAX_INPUT_ENV`] says otherwise.
pub const DEFAULT_MAX_FILE: u64 = 4 << 30;
/// The environment variable that sets the largest input file, in bytes (a `K`, `M` or `G`
/// suffix multiplies by 1024, 1024² or 1024³).
pub const MAX_INPUT_ENV: &str = "LEASH_MAX_INPUT_BYTES";
/// How much one read asks for.
const CHUNK: usize = 256 << 10;

/// An input that could not be read within its bounds.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or its type read.
    #[error("{}: cannot open", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is a FIFO, socket or device where a regular file is required.
    #[error("{}: is a {kind}, not a regular file; refusing to read it", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// `FIFO`, `socket`, `character device`, `block device` or `directory`.
        kind: &'static str,
    },
    /// Reading failed.
    #[error("{}: read failed", path.display())]
    Read {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is longer than the limit.
    #[error("{}:{line}: line longer than {max} bytes", path.display())]
    LineTooLong {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// The file is larger than the limit.
    #[error("{}: larger than {max} bytes (set {MAX_INPUT_ENV} to raise the limit)", path.display())]
    TooLarge {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The text is not UTF-8.
    #[error("{}:{line}: invalid UTF-8", path.display())]
    Utf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },
    /// [`MAX_INPUT_ENV`] holds no valid size.
    #[error("{MAX_INPUT_ENV}={value:?}: expected a number of bytes, optionally with K, M or G")]
    BadLimit {
        /// The variable's value.
        value: String,
    },
}

/// `Result` with [`InputError`].
pub type Result<T, E = InputError> = std::result::Result<T, E>;

/// The bounds of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line, in bytes, without its newline.
    pub max_line: usize,
    /// The largest file, in bytes.
    pub max_file: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line: DEFAULT_MAX_LINE,
            max_file: DEFAULT_MAX_FILE,
        }
    }
}

impl Limits {
    /// The defaults, with the file bound from [`MAX_INPUT_ENV`] when it is set.
    pub fn from_env() -> Result<Self> {
        let mut limits = Self::default();
        if let Some(value) = std::env::var_os(MAX_INPUT_ENV) {
            let value = value.to_string_lossy().into_owned();
            limits.max_file = parse_size(&value).ok_or(InputError::BadLimit { value })?;
        }
        Ok(limits)
    }
}

/// `1234`, `64K`, `512M`, `4G` (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

/// What a file is, in words (`FIFO`, `socket`, …), when it is not a regular file.
pub fn kind_of(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("directory")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else {
        Some("special file")
    }
}

/// Opens `path` for reading. With `regular_only`, anything but a regular file is refused
/// without blocking: the file is opened non-blocking (so a FIFO without a writer does not
/// hang) and its type checked on the open descriptor (so it cannot change in between).
/// Without it, a FIFO or device named explicitly (`<(zcat flows.gz)`) is read, blocking as
/// usual, and only bounded by [`Limits`].
pub fn open(path: &Path, regular_only: bool) -> Result<File> {
    let open_err = |source| InputError::Open {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(open_err)?;
    let kind = kind_of(file.metadata().map_err(open_err)?.file_type());
    match kind {
        // O_NONBLOCK does not change how regular files read.
        None => Ok(file),
        Some(kind) if regular_only || kind == "directory" => Err(InputError::NotRegular {
            path: path.to_path_buf(),
            kind,
        }),
        // Asked for by name: open it again, blocking, as the user meant.
        Some(_) => std::fs::File::open(path).map_err(open_err),
    }
}

/// Reads a whole file (`regular_only` as for [`open`]) as UTF-8 text within `limits`;
/// invalid UTF-8 is reported with its line.
pub fn read_to_string(path: &Path, regular_only: bool, limits: Limits) -> Result<String> {
    let file = open(path, regular_only)?;
    // Reads sized to the file: a directory of thousands of small policy files would
    // otherwise allocate and clear a whole chunk for each (seconds, in `leash diff` on
    // 31,000 files); a FIFO or a growing file still reads in chunks.
    let size = file.metadata().map_or(0, |m| m.len());
    let chunk = usize::try_from(size.saturating_add(1))
        .unwrap_or(CHUNK)
        .clamp(4 << 10, CHUNK);
    let mut reader = LineReader::new(file, path, limits).with_chunk(chunk);
    let mut text = Vec::new();
    while let Some(block) = reader.next_block(chunk)? {
        text.extend_from_slice(&block);
    }
    String::from_utf8(text).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        InputError::Utf8 {
            path: path.to_path_buf(),
            line: memchr::memchr_iter(b'\n', valid).count() + 1,
        }
    })
}

/// Lines (or blocks of whole lines) of an input, within [`Limits`].
///
/// Lines end at `\n`, which is not part of the line; a last line without one is still a
/// line. Each byte is searched for a newline once, when it is read.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    path: PathBuf,
    limits: Limits,
    /// Bytes read and not yet handed out start at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Where the line being read (not yet ended by a newline) starts in `buf`.
    line_start: usize,
    /// The last newline in `buf` (an index), if any after `start`.
    last_newline: Option<usize>,
    /// Newlines read so far (for the number of a line that is too long).
    newlines: usize,
    /// Bytes read so far.
    total: u64,
    /// Lines handed out by [`Self::next_line`].
    lines_out: usize,
    /// Whether the input has ended.
    eof: bool,
    /// Bytes asked of the input per read.
    chunk: usize,
}

impl<R: Read> LineReader<R> {
    /// Reads `inner`, named `path` in errors, within `limits`.
    pub fn new(inner: R, path: &Path, limits: Limits) -> Self {
        Self {
            inner,
            path: path.to_path_buf(),
            limits,
            buf: Vec::new(),
            start: 0,
            line_start: 0,
            last_newline: None,
            newlines: 0,
            total: 0,
            lines_out: 0,
            eof: false,
            chunk: CHUNK,
        }
    }

    /// Reads `chunk` bytes at a time (at least 1) instead of the default 256 KiB: for
    /// inputs known to be small.
    pub fn with_chunk(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// The 1-based number of the line last returned by [`Self::next_line`].
    pub fn line(&self) -> usize {
        self.lines_out
    }

    /// Drops the bytes handed out, so that the buffer holds at most one partial line (plus
    /// whole lines not yet handed out).
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.drain(..self.start);
        self.line_start = self.line_start.saturating_sub(self.start);
        self.last_newline = self
            .last_newline
            .filter(|&i| i >= self.start)
            .map(|i| i - self.start);
        self.start = 0;
    }

    /// Reads one chunk, checking the lines it ends and the one it leaves open.
    fn fill(&mut self) -> Result<()> {
        let old = self.buf.len();
        self.buf.resize(old + self.chunk, 0);
        let n = loop {
            match self.inner.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    self.buf.truncate(old);
                    return Err(InputError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
            return Ok(());
        }
        self.total = self.total.saturating_add(n as u64);
        if self.total > self.limits.max_file {
            return Err(InputError::TooLarge {
                path: self.path.clone(),
                max: self.limits.max_file,
            });
        }
        for i in memchr::memchr_iter(b'\n', &self.buf[old..]) {
            let at = old + i;
            self.check_line(at - self.line_start)?;
            self.newlines += 1;
            self.line_start = at + 1;
            self.last_newline = Some(at);
        }
        self.check_line(self.buf.len() - self.line_start)
    }

    fn check_line(&self, len: usize) -> Result<()> {
        if len > self.limits.max_line {
            return Err(InputError::LineTooLong {
                path: self.path.clone(),
                line: self.newlines + 1,
                max: self.limits.max_line,
            });
        }
        Ok(())
    }

    /// The next line, without its `\n`; `None` at the end of the input.
    pub fn next_line(&mut self) -> Result<Option<&[u8]>> {
        // Only bytes after `from` may hold the newline: each is searched once.
        let mut from = self.start;
        let (begin, end, next) = loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[from..]) {
                break (self.start, from + i, from + i + 1);
            }
            if self.eof {
                if self.start == self.buf.len() {
                    return Ok(None);
                }
                break (self.start, self.buf.len(), self.buf.len());
            }
            let searched = self.buf.len() - self.start;
            self.compact();
            from = searched;
            self.fill()?;
        };
        self.start = next;
        self.lines_out += 1;
        Ok(Some(&self.buf[begin..end]))
    }

    /// The next block of whole lines (each with its `\n`, but the input's last line if it
    /// has none): at least `min` bytes unless the input ends first. `None` at the end.
    pub fn next_block(&mut self, min: usize) -> Result<Option<Vec<u8>>> {
        loop {
            let cut = match self.last_newline {
                Some(i) if i >= self.start && i + 1 - self.start >= min => i + 1,
                _ if self.eof => self.buf.len(),
                _ => {
                    self.compact();
                    self.fill()?;
                    continue;
                }
            };
            if cut == self.start {
                return Ok(None);
            }
            // The next block grows in a buffer sized for it, not by doubling from the tail.
            let mut rest = Vec::with_capacity(min.saturating_add(self.chunk).min(1 << 30));
            rest.extend_from_slice(&self.buf[cut..]);
            self.buf.truncate(cut);
            let mut block = std::mem::replace(&mut self.buf, rest);
            if self.start > 0 {
                block.drain(..self.start);
            }
            self.line_start = self.line_start.saturating_sub(cut);
            self.last_newline = None;
            self.start = 0;
            return Ok(Some(block));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], limits: Limits) -> Result<Vec<Vec<u8>>> {
        let mut r = LineReader::new(input, Path::new("in"), limits);
        let mut out = Vec::new();
        while let Some(l) = r.next_line()? {
            out.push(l.to_vec());
        }
        Ok(out)
    }

    fn blocks(input: &[u8], min: usize, limits: Limits) -> Result<Vec<Vec<u8>>> {
        let mut r = LineReader::new(input, Path::new("in"), limits);
        let mut out = Vec::new();
        while let Some(b) = r.next_block(min)? {
            out.push(b);
        }
        Ok(out)
    }

    /// What a naive reader makes of valid input: split at `\n`, no empty last line.
    fn naive(input: &[u8]) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = input.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        if input.is_empty() || input.ends_with(b"\n") {
            v.pop();
        }
        v
    }

    const SMALL: Limits = Limits {
        max_line: 10,
        max_file: 100,
    };

    #[test]
    fn long_lines_and_large_files_are_named() {
        let err = lines(b"ok\n0123456789abc\n", SMALL).unwrap_err();
        assert_eq!(err.to_string(), "in:2: line longer than 10 bytes");
        let err = lines(&[b'x'; 11], SMALL).unwrap_err();
        assert_eq!(err.to_string(), "in:1: line longer than 10 bytes");
        assert_eq!(lines(&[b'x'; 10], SMALL).unwrap(), vec![vec![b'x'; 10]]);
        let err = lines(&b"abc\n".repeat(30), SMALL).unwrap_err();
        assert!(
            matches!(err, InputError::TooLarge { max: 100, .. }),
            "{err}"
        );
        let err = blocks(&b"abc\n".repeat(30), 8, SMALL).unwrap_err();
        assert!(matches!(err, InputError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn endless_input_stops_at_the_line_limit() {
        let zero = std::io::repeat(0);
        let limits = Limits {
            max_line: 1 << 20,
            max_file: u64::MAX,
        };
        let mut r = LineReader::new(zero, Path::new("/dev/zero"), limits);
        let err = r.next_line().unwrap_err();
        assert!(
            matches!(err, InputError::LineTooLong { line: 1, .. }),
            "{err}"
        );
        let mut r = LineReader::new(std::io::repeat(0), Path::new("z"), limits);
        assert!(r.next_block(4096).is_err());
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("1234"), Some(1234));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn read_to_string_names_the_line_of_bad_utf8_and_refuses_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, b"a: 1\nb: \xff\n").unwrap();
        let err = read_to_string(&bad, true, Limits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:2: invalid UTF-8", bad.display())
        );
        let fifo = dir.path().join("p.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_to_string(&fifo, true, Limits::default()).unwrap_err();
        assert!(
            matches!(err, InputError::NotRegular { kind: "FIFO", .. }),
            "{err}"
        );
        let err = open(dir.path(), false).unwrap_err();
        assert!(matches!(
            err,
            InputError::NotRegular {
                kind: "directory",
                ..
            }
        ));
    }

    /// Reads sized to the file read every byte of files around and across the read sizes, and
    /// still refuse a file over the limit or with a line over the limit.
    #[test]
    fn read_to_string_reads_files_of_any_size_within_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yaml");
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 7,
        ] {
            let text: String = (0..len)
                .map(|i| if i % 61 == 60 { '\n' } else { 'x' })
                .collect();
            std::fs::write(&path, &text).unwrap();
            assert_eq!(
                read_to_string(&path, true, Limits::default()).unwrap(),
                text,
                "{len} bytes"
            );
        }
        std::fs::write(&path, "x\n".repeat(3000)).unwrap();
        let small = Limits {
            max_line: 1000,
            max_file: 5999,
        };
        assert!(matches!(
            read_to_string(&path, true, small),
            Err(InputError::TooLarge { .. })
        ));
        std::fs::write(&path, format!("a\n{}\n", "y".repeat(1001))).unwrap();
        assert!(read_to_string(&path, true, small).is_err());
    }

    /// A reader that hands out at most `n` bytes per read, to cut lines across reads.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest::proptest! {
        #[test]
        fn same_lines_as_a_naive_reader(
            input in proptest::collection::vec(proptest::prop_oneof![3 => proptest::num::u8::ANY, 1 => proptest::strategy::Just(b'\n')], 0..2000),
            step in 1usize..300,
            min in 1usize..500,
        ) {
            let limits = Limits { max_line: usize::MAX, max_file: u64::MAX };
            let want = naive(&input);
            let mut r = LineReader::new(Trickle(&input, step), Path::new("in"), limits);
            let mut got = Vec::new();
            while let Some(l) = r.next_line().unwrap() {
                got.push(l.to_vec());
            }
            proptest::prop_assert_eq!(&got, &want);
            let mut r = LineReader::new(Trickle(&input, step), Path::new("in"), limits);
            let mut joined = Vec::new();
            while let Some(b) = r.next_block(min).unwrap() {
                // Whole lines only: a block ends at a newline or at the end of the input.
                proptest::prop_assert!(b.ends_with(b"\n") || joined.len() + b.len() == input.len());
                proptest::prop_assert!(!b.is_empty());
                joined.extend_from_slice(&b);
            }
            proptest::prop_assert_eq!(joined, input);
        }

        #[test]
        fn never_panics_and_enforces_the_bounds(
            input in proptest::collection::vec(proptest::prop_oneof![3 => proptest::num::u8::ANY, 1 => proptest::strategy::Just(b'\n')], 0..600),
            max_line in 0usize..40,
            max_file in 0u64..700,
            step in 1usize..50,
        ) {
            let limits = Limits { max_line, max_file };
            let mut r = LineReader::new(Trickle(&input, step), Path::new("in"), limits);
            let mut got = Vec::new();
            let result = loop {
                match r.next_line() {
                    Ok(Some(l)) => got.push(l.to_vec()),
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let want = naive(&input);
            let too_long = want.iter().position(|l| l.len() > max_line);
            match result {
                Ok(()) => {
                    proptest::prop_assert!(input.len() as u64 <= max_file);
                    proptest::prop_assert!(too_long.is_none());
                    proptest::prop_assert_eq!(got, want);
                }
                Err(InputError::LineTooLong { line, .. }) => {
                    proptest::prop_assert_eq!(Some(line - 1), too_long);
                    proptest::prop_assert_eq!(&got[..], &want[..got.len()]);
                }
                Err(InputError::TooLarge { .. }) => {
                    proptest::prop_assert!(input.len() as u64 > max_file);
                }
                Err(e) => proptest::prop_assert!(false, "unexpected {e}"),
            }
        }
    }
}
