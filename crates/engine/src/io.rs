//! What the read and write paths need to know about one open file, and what they report back.

use crate::align::Alignment;
use crate::behind::Behind;
use crate::bufpool::BufPool;
use crate::readahead::{Params, Readahead};
use crate::writing::FileWrites;

/// One open file description as the read and write paths see it.
pub struct FileIo<'a> {
    /// The descriptor with O_DIRECT set (the twin).
    pub fd: i32,
    /// The program's own descriptor of the file, buffered: the buffered pieces go through it.
    pub prog: i32,
    /// The O_DIRECT requirements of the file.
    pub align: Alignment,
    /// What the buffered pieces left in the page cache.
    pub behind: &'a Behind,
    /// O_RDONLY, O_WRONLY or O_RDWR.
    pub accmode: i32,
    /// The description has O_APPEND.
    pub append: bool,
    /// The file's write sequence, moved by every write (read-ahead windows of the file are
    /// stale after it).
    pub writes: FileWrites,
    /// Bounce buffers.
    pub pool: &'a BufPool,
    /// Running inside a signal handler that interrupted the engine: never block.
    pub nowait: bool,
    /// S3DLIO_DIRECT_SYNC: the twin has O_SYNC, and buffered pieces are made as durable
    /// (fsync) before the call returns.
    pub sync: bool,
    /// Which speed mechanisms the call may use.
    pub tuning: Tuning<'a>,
}

/// Which of the engine's speed mechanisms a call may use (all off by default).
#[derive(Clone, Copy, Default)]
pub struct Tuning<'a> {
    /// The description's read-ahead state and parameters.
    pub readahead: Option<(&'a Readahead, Params)>,
    /// Writes shorter than this many bytes go through the page cache on the program's own
    /// description, written back and dropped behind (0: off).
    pub write_behind: usize,
    /// Every call goes through the program's own description with RWF_DONTCACHE.
    pub dontcache: bool,
}

/// What one call did, for statistics and for the caller's fallback decisions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes moved by O_DIRECT straight from or into the program's buffer.
    pub direct_bytes: u64,
    /// Bytes the program asked for that went through a bounce buffer (still direct).
    pub bounced_bytes: u64,
    /// Bytes that went through the page cache (the program's description), dropped afterwards.
    pub buffered_bytes: u64,
    /// Bytes asked of the device for read-ahead windows, counted when asked.
    pub readahead_bytes: u64,
    /// Bytes of a read asked of the device outside the windows: direct reads, the aligned
    /// supersets of bounced reads (up to the last block of the file), and what reads through
    /// the page cache returned.
    pub device_bytes: u64,
    /// Bytes copied to the program from read-ahead windows.
    pub readahead_copied: u64,
    /// A direct call failed with EINVAL and was redone on the buffered path.
    pub einval_retry: bool,
}
