//! The durable local spool: where audit events wait while the audit service
//! is away, so that nothing is lost when it is down or slow, nor when this
//! process is killed.
//!
//! Layout: one directory per service (`<spool_dir>/<service>/`) holding
//! segment files `00000000000000000001.spool`, `…02.spool`, …; a higher
//! number holds later events. Each segment is a sequence of records:
//!
//! ```text
//! u32 little-endian payload length | 8-byte checksum | payload (prost-encoded AuditEvent)
//! ```
//!
//! The checksum is the first 8 bytes of the SHA-256 of the payload.
//!
//! * [`Spool::append`] writes a whole batch with one `write` and one
//!   `sync_data`: once it returns, the batch survives a crash or power loss.
//!   A segment is closed and a new one started once it is above
//!   [`SEGMENT_BYTES`].
//! * [`Spool::read_batch`] reads the oldest records without consuming them;
//!   [`Spool::consume`] advances past them once the audit service has
//!   acknowledged them, and deletes each segment whose records are all
//!   consumed. The read position lives in memory: after a crash, the events
//!   of a partly consumed segment are sent again, which `Record` tolerates
//!   (it is idempotent by `event_id`).
//! * [`Spool::open`] recovers after a crash: a torn record at the end of the
//!   newest segment (a write cut short) is cut off with a warning; a bad
//!   record inside an older segment (disk corruption) is reported as an error
//!   naming the file and offset, and the rest of that segment is skipped.
//!   Recovery never panics and never refuses to start over bad data.
//!
//! All of this is blocking file I/O: callers on a Tokio runtime run it in
//! `spawn_blocking`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use agentmesh_proto::audit::v1::AuditEvent;
use prost::Message;
use sha2::{Digest, Sha256};

/// A segment is closed, and the next append starts a new one, once it holds
/// more than this many bytes.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;

/// Largest payload of one record. A larger length in a header can only be
/// corruption (events are limited to 64 KiB by the audit service), and
/// believing it would allocate that much.
const MAX_RECORD_BYTES: usize = 16 << 20;

/// Length prefix plus checksum.
const HEADER_BYTES: usize = 4 + CHECKSUM_BYTES;
const CHECKSUM_BYTES: usize = 8;
const EXTENSION: &str = "spool";

/// The spool of one service. Not thread-safe by itself: the sender owns it
/// behind a mutex.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    /// Oldest first. The last one is the segment being appended to when
    /// `writer` is set.
    segments: VecDeque<Segment>,
    /// Bytes of `segments[0]` already consumed.
    read_offset: u64,
    writer: Option<File>,
    next_seq: u64,
    /// Bytes of unconsumed records.
    total_bytes: u64,
    /// Where each record returned by the last `read_batch` ends, for
    /// `consume`.
    peeked: Vec<Position>,
    segment_limit: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes of good records; reading stops there.
    len: u64,
}

#[derive(Debug, Clone, Copy)]
struct Position {
    seq: u64,
    end: u64,
}

/// Why a record could not be read.
enum RecordError {
    /// The file ends inside the record.
    Short,
    /// The record is not what was written.
    Corrupt(&'static str),
    Io(io::Error),
}

impl RecordError {
    fn describe(&self) -> String {
        match self {
            Self::Short => "record cut short".to_owned(),
            Self::Corrupt(why) => (*why).to_owned(),
            Self::Io(err) => err.to_string(),
        }
    }
}

impl Spool {
    /// Opens the spool in `dir`, creating the directory, and recovers what a
    /// previous process left there.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with_segment_limit(dir, SEGMENT_BYTES)
    }

    /// [`Spool::open`] with another segment size (tests rotate early).
    pub(crate) fn open_with_segment_limit(dir: &Path, segment_limit: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            if entry.file_type()?.is_file() {
                found.push((seq, entry.path()));
            }
        }
        found.sort_unstable_by_key(|(seq, _)| *seq);
        let next_seq = found.last().map_or(1, |(seq, _)| seq.saturating_add(1));
        let newest = found.len().checked_sub(1);
        let mut segments = VecDeque::with_capacity(found.len());
        let mut total_bytes = 0;
        for (index, (seq, path)) in found.into_iter().enumerate() {
            let Scan {
                good,
                file_len,
                problem,
            } = scan(&path)?;
            if let Some((offset, problem)) = problem {
                if Some(index) == newest {
                    // A crash in the middle of an append: the batch was never
                    // acknowledged as spooled, so cutting it off loses nothing
                    // that was promised.
                    tracing::warn!(
                        file = %path.display(),
                        offset,
                        problem = %problem.describe(),
                        dropped_bytes = file_len - good,
                        "audit spool: torn record at the end of the newest segment (interrupted write); truncating it"
                    );
                    if let Err(err) = truncate(&path, good) {
                        tracing::error!(file = %path.display(), error = %err, "audit spool: could not truncate the torn segment; its tail is ignored");
                    }
                } else {
                    tracing::error!(
                        file = %path.display(),
                        offset,
                        problem = %problem.describe(),
                        skipped_bytes = file_len - good,
                        "audit spool: bad record inside a segment (disk corruption?); skipping the rest of this segment"
                    );
                }
            }
            if good == 0 {
                // Nothing readable: an empty segment (crash right after it was
                // created) or one that was all torn.
                if let Err(err) = fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %err, "audit spool: could not remove an empty segment");
                }
                continue;
            }
            total_bytes += good;
            segments.push_back(Segment {
                seq,
                path,
                len: good,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            segments,
            read_offset: 0,
            // A new process never appends to an old file: the first append
            // starts a new segment.
            writer: None,
            next_seq,
            total_bytes,
            peeked: Vec::new(),
            segment_limit: segment_limit.max(1),
        })
    }

    /// Bytes of records not yet consumed.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends `events` durably: one write and one `sync_data` for the whole
    /// batch. On error nothing of the batch is kept (a partial write is cut
    /// off again), so the caller may retry it.
    pub(crate) fn append(&mut self, events: &[AuditEvent]) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(
            events
                .iter()
                .map(|event| HEADER_BYTES + event.encoded_len())
                .sum(),
        );
        for event in events {
            let len = event.encoded_len();
            let Some(prefix) = u32::try_from(len).ok().filter(|_| len <= MAX_RECORD_BYTES) else {
                // Never sendable either (the audit service limits events to
                // 64 KiB): refusing the whole batch would block the spool.
                tracing::error!(
                    event_id = %event.event_id,
                    bytes = len,
                    "audit spool: event too large to spool; dropped"
                );
                continue;
            };
            let record_at = buffer.len();
            buffer.extend_from_slice(&prefix.to_le_bytes());
            let checksum_at = buffer.len();
            buffer.extend_from_slice(&[0; CHECKSUM_BYTES]);
            let payload_at = buffer.len();
            if event.encode(&mut buffer).is_err() {
                // Cannot happen with a Vec (it grows as needed); never write
                // a half-encoded record if it does.
                buffer.truncate(record_at);
                tracing::error!(event_id = %event.event_id, "audit spool: event could not be encoded; dropped");
                continue;
            }
            let sum = checksum(buffer.get(payload_at..).unwrap_or_default());
            if let Some(slot) = buffer.get_mut(checksum_at..payload_at) {
                slot.copy_from_slice(&sum);
            }
        }
        if buffer.is_empty() {
            return Ok(());
        }
        let rotate = match (self.writer.as_ref(), self.segments.back()) {
            (Some(_), Some(segment)) => segment.len >= self.segment_limit,
            _ => true,
        };
        if rotate {
            self.start_segment()?;
        }
        let (Some(writer), Some(segment)) = (self.writer.as_mut(), self.segments.back_mut()) else {
            return Err(io::Error::other("audit spool: no segment to append to"));
        };
        let written = writer.write_all(&buffer).and_then(|()| writer.sync_data());
        match written {
            Ok(()) => {
                let added = buffer.len() as u64;
                segment.len += added;
                self.total_bytes += added;
                Ok(())
            }
            Err(err) => {
                // Cut off whatever part of the batch reached the file, so
                // that a retry does not leave a torn record in the middle.
                // If even that fails, stop appending to this file: readers
                // stop at `segment.len` anyway.
                let restored = writer
                    .set_len(segment.len)
                    .and_then(|()| writer.sync_data());
                if restored.is_err() {
                    self.writer = None;
                }
                Err(err)
            }
        }
    }

    /// Up to `max` of the oldest unconsumed events, without consuming them.
    /// A bad record is reported and the rest of its segment skipped.
    pub(crate) fn read_batch(&mut self, max: usize) -> io::Result<Vec<AuditEvent>> {
        self.peeked.clear();
        let mut events = Vec::new();
        let mut index = 0;
        let mut offset = self.read_offset;
        while events.len() < max && index < self.segments.len() {
            let (seq, len, path) = match self.segments.get(index) {
                Some(segment) => (segment.seq, segment.len, segment.path.clone()),
                None => break,
            };
            if offset < len {
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        // Removed behind our back: skip it rather than block
                        // the spool forever.
                        tracing::error!(
                            file = %path.display(),
                            skipped_bytes = len - offset,
                            "audit spool: segment file disappeared; its events are lost"
                        );
                        self.cut_segment(index, offset);
                        index += 1;
                        offset = 0;
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                let mut reader = BufReader::with_capacity(64 * 1024, file);
                reader.seek(SeekFrom::Start(offset))?;
                while events.len() < max && offset < len {
                    match read_record(&mut reader, len - offset) {
                        Ok((event, size)) => {
                            offset += size;
                            events.push(event);
                            self.peeked.push(Position { seq, end: offset });
                        }
                        Err(RecordError::Io(err)) => return Err(err),
                        Err(problem) => {
                            tracing::error!(
                                file = %path.display(),
                                offset,
                                problem = %problem.describe(),
                                skipped_bytes = len - offset,
                                "audit spool: bad record (disk corruption?); skipping the rest of this segment"
                            );
                            self.cut_segment(index, offset);
                            break;
                        }
                    }
                }
            }
            index += 1;
            offset = 0;
        }
        Ok(events)
    }

    /// Consumes the first `n` events of the last [`Spool::read_batch`] (they
    /// were acknowledged), deleting the segments that are now fully
    /// consumed.
    pub(crate) fn consume(&mut self, n: usize) -> io::Result<()> {
        let consumed = n.min(self.peeked.len());
        let Some(last) = consumed
            .checked_sub(1)
            .and_then(|i| self.peeked.get(i))
            .copied()
        else {
            self.peeked.clear();
            return Ok(());
        };
        self.peeked.clear();
        // Segments before the one holding the last consumed record are done.
        while self
            .segments
            .front()
            .is_some_and(|head| head.seq < last.seq)
        {
            self.remove_head()?;
        }
        if let Some(head) = self.segments.front()
            && head.seq == last.seq
            && last.end > self.read_offset
        {
            self.total_bytes = self.total_bytes.saturating_sub(last.end - self.read_offset);
            self.read_offset = last.end;
        }
        while self
            .segments
            .front()
            .is_some_and(|head| self.read_offset >= head.len)
        {
            self.remove_head()?;
        }
        Ok(())
    }

    /// Deletes the oldest segment, consumed or skipped.
    fn remove_head(&mut self) -> io::Result<()> {
        let Some(head) = self.segments.pop_front() else {
            return Ok(());
        };
        self.total_bytes = self
            .total_bytes
            .saturating_sub(head.len.saturating_sub(self.read_offset));
        self.read_offset = 0;
        if self.segments.is_empty() {
            // It was the segment being appended to: the next append starts a
            // new one rather than growing a file that is about to be deleted.
            self.writer = None;
        }
        match fs::remove_file(&head.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Ends segment `index` at `offset` (a bad record starts there).
    fn cut_segment(&mut self, index: usize, offset: u64) {
        let is_last = index + 1 == self.segments.len();
        if let Some(segment) = self.segments.get_mut(index) {
            self.total_bytes = self
                .total_bytes
                .saturating_sub(segment.len.saturating_sub(offset));
            segment.len = offset;
        }
        if is_last {
            // Appending after the bad record would put good records where
            // they are never read.
            self.writer = None;
        }
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        let path = self.dir.join(segment_name(seq));
        // The directory may have been removed under us (e.g. a cleanup of a
        // temporary directory); creating it again costs nothing when it is
        // there.
        fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // Make the new file's name durable, or a crash could lose a segment
        // whose records were fsync'd.
        sync_dir(&self.dir);
        self.next_seq = seq.saturating_add(1);
        self.writer = Some(file);
        self.segments.push_back(Segment { seq, path, len: 0 });
        Ok(())
    }
}

/// `{:020}.spool`.
fn segment_name(seq: u64) -> String {
    format!("{seq:020}.{EXTENSION}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = Sha256::digest(payload);
    let mut sum = [0; CHECKSUM_BYTES];
    for (byte, from) in sum.iter_mut().zip(digest.iter()) {
        *byte = *from;
    }
    sum
}

/// Reads one record of at most `available` bytes; returns the event and the
/// record's size.
fn read_record(reader: &mut impl Read, available: u64) -> Result<(AuditEvent, u64), RecordError> {
    let mut header = [0; HEADER_BYTES];
    read_exact(reader, &mut header)?;
    let mut prefix = [0; 4];
    prefix.copy_from_slice(&header[..4]);
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_RECORD_BYTES {
        return Err(RecordError::Corrupt("record length out of range"));
    }
    let size = (HEADER_BYTES + len) as u64;
    if size > available {
        return Err(RecordError::Short);
    }
    let mut payload = vec![0; len];
    read_exact(reader, &mut payload)?;
    if checksum(&payload)[..] != header[4..] {
        return Err(RecordError::Corrupt("checksum mismatch"));
    }
    let event = AuditEvent::decode(payload.as_slice())
        .map_err(|_| RecordError::Corrupt("not an audit event"))?;
    Ok((event, size))
}

fn read_exact(reader: &mut impl Read, buffer: &mut [u8]) -> Result<(), RecordError> {
    reader.read_exact(buffer).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            RecordError::Short
        } else {
            RecordError::Io(err)
        }
    })
}

/// What [`scan`] found in a segment.
struct Scan {
    /// Bytes of good records from the start.
    good: u64,
    /// The file's length.
    file_len: u64,
    /// Where and why the first bad record starts.
    problem: Option<(u64, RecordError)>,
}

/// Checks every record of a segment.
fn scan(path: &Path) -> io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut good = 0;
    while good < file_len {
        match read_record(&mut reader, file_len - good) {
            Ok((_, size)) => good += size,
            Err(RecordError::Io(err)) => return Err(err),
            Err(problem) => {
                return Ok(Scan {
                    good,
                    file_len,
                    problem: Some((good, problem)),
                });
            }
        }
    }
    Ok(Scan {
        good,
        file_len,
        problem: None,
    })
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Best effort: not every platform can fsync a directory.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            event_id: format!("event-{i:05}"),
            reason: "x".repeat(100),
            ..AuditEvent::default()
        }
    }

    fn events(range: std::ops::Range<usize>) -> Vec<AuditEvent> {
        range.map(event).collect()
    }

    fn ids(events: &[AuditEvent]) -> Vec<String> {
        events.iter().map(|e| e.event_id.clone()).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".spool"))
            .collect();
        names.sort();
        names
    }

    /// Reads and consumes everything, `batch` at a time.
    fn drain(spool: &mut Spool, batch: usize) -> Vec<AuditEvent> {
        let mut all = Vec::new();
        loop {
            let got = spool.read_batch(batch).unwrap();
            if got.is_empty() {
                return all;
            }
            spool.consume(got.len()).unwrap();
            all.extend(got);
        }
    }

    #[test]
    fn directory_is_created_on_first_use() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool").join("orchestrator");
        let mut spool = Spool::open(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(spool.total_bytes(), 0);
        assert!(segment_files(&dir).is_empty());
        spool.append(&events(0..1)).unwrap();
        assert_eq!(segment_files(&dir), vec![segment_name(1)]);
    }

    #[test]
    fn round_trip_across_segment_rotation() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open_with_segment_limit(tmp.path(), 1000).unwrap();
        for chunk in 0..10 {
            spool.append(&events(chunk * 5..chunk * 5 + 5)).unwrap();
        }
        assert!(segment_files(tmp.path()).len() > 3);
        assert!(spool.total_bytes() > 5000);
        // Reading does not consume.
        assert_eq!(ids(&spool.read_batch(3).unwrap()), ids(&events(0..3)));
        assert_eq!(ids(&spool.read_batch(3).unwrap()), ids(&events(0..3)));
        let all = drain(&mut spool, 7);
        assert_eq!(ids(&all), ids(&events(0..50)));
        assert_eq!(all[7], event(7));
        assert_eq!(spool.total_bytes(), 0);
        assert_eq!(spool.total_bytes(), 0);
    }

    #[test]
    fn consume_deletes_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open_with_segment_limit(tmp.path(), 500).unwrap();
        for i in 0..4 {
            spool.append(&events(i * 4..i * 4 + 4)).unwrap();
        }
        let before = segment_files(tmp.path());
        assert_eq!(before.len(), 4);
        let first = spool.read_batch(5).unwrap();
        spool.consume(first.len()).unwrap();
        // The first segment (4 events) is gone, the second partly consumed.
        assert_eq!(segment_files(tmp.path()), before[1..].to_vec());
        let rest = drain(&mut spool, 100);
        assert_eq!(ids(&rest), ids(&events(5..16)));
        assert!(segment_files(tmp.path()).is_empty());
        // Appending again after everything was consumed starts a new file.
        spool.append(&events(16..17)).unwrap();
        assert_eq!(segment_files(tmp.path()), vec![segment_name(5)]);
        assert_eq!(ids(&drain(&mut spool, 10)), ids(&events(16..17)));
    }

    #[test]
    fn partial_consume_keeps_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(tmp.path()).unwrap();
        spool.append(&events(0..10)).unwrap();
        let got = spool.read_batch(10).unwrap();
        assert_eq!(got.len(), 10);
        spool.consume(4).unwrap();
        assert_eq!(ids(&spool.read_batch(100).unwrap()), ids(&events(4..10)));
        // Consuming more than was read consumes what was read.
        spool.consume(100).unwrap();
        assert_eq!(spool.total_bytes(), 0);
    }

    #[test]
    fn reopen_keeps_order() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open_with_segment_limit(tmp.path(), 700).unwrap();
            for i in 0..6 {
                spool.append(&events(i * 3..i * 3 + 3)).unwrap();
            }
            let got = spool.read_batch(2).unwrap();
            spool.consume(got.len()).unwrap();
        }
        let mut spool = Spool::open_with_segment_limit(tmp.path(), 700).unwrap();
        assert!(spool.total_bytes() > 0);
        spool.append(&events(18..20)).unwrap();
        // The read position was in memory: the partly consumed segment is
        // read again from its start (Record is idempotent).
        assert_eq!(ids(&drain(&mut spool, 4)), ids(&events(0..20)));
        assert!(segment_files(tmp.path()).is_empty());
    }

    #[test]
    fn torn_tail_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(tmp.path()).unwrap();
            spool.append(&events(0..3)).unwrap();
            spool.append(&events(3..5)).unwrap();
        }
        let path = tmp.path().join(segment_name(1));
        let full = fs::metadata(&path).unwrap().len();
        // A crash in the middle of the last record.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 10).unwrap();
        drop(file);
        let mut spool = Spool::open(tmp.path()).unwrap();
        let record = full / 5;
        assert_eq!(fs::metadata(&path).unwrap().len(), record * 4);
        assert_eq!(spool.total_bytes(), record * 4);
        spool.append(&events(5..6)).unwrap();
        let all = drain(&mut spool, 100);
        assert_eq!(
            ids(&all),
            vec![
                "event-00000",
                "event-00001",
                "event-00002",
                "event-00003",
                "event-00005"
            ]
        );
    }

    #[test]
    fn garbage_tail_and_empty_segments_are_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(tmp.path()).unwrap();
            spool.append(&events(0..2)).unwrap();
        }
        let path = tmp.path().join(segment_name(1));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0xff; 40]).unwrap();
        drop(file);
        // An empty newer segment (crash right after creating it).
        File::create(tmp.path().join(segment_name(2))).unwrap();
        // Unrelated files are left alone.
        fs::write(tmp.path().join("notes.txt"), "hi").unwrap();
        let mut spool = Spool::open(tmp.path()).unwrap();
        assert_eq!(ids(&drain(&mut spool, 10)), ids(&events(0..2)));
        assert!(tmp.path().join("notes.txt").exists());
        // New segments never reuse a number seen on disk.
        spool.append(&events(2..3)).unwrap();
        assert_eq!(segment_files(tmp.path()), vec![segment_name(3)]);
    }

    #[test]
    fn corruption_inside_an_older_segment_skips_its_rest() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open_with_segment_limit(tmp.path(), 1).unwrap();
            spool.append(&events(0..3)).unwrap();
            spool.append(&events(3..6)).unwrap();
        }
        let path = tmp.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let record = bytes.len() / 3;
        // Flip a byte in the payload of the second record.
        bytes[record + HEADER_BYTES + 5] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let mut spool = Spool::open(tmp.path()).unwrap();
        let all = drain(&mut spool, 100);
        assert_eq!(
            ids(&all),
            vec!["event-00000", "event-00003", "event-00004", "event-00005"]
        );
        assert!(segment_files(tmp.path()).is_empty());
    }

    #[test]
    fn corruption_found_while_reading_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spool = Spool::open_with_segment_limit(tmp.path(), 1).unwrap();
        spool.append(&events(0..2)).unwrap();
        spool.append(&events(2..4)).unwrap();
        // The disk corrupts the first segment after it was written.
        let path = tmp.path().join(segment_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let all = drain(&mut spool, 100);
        assert_eq!(ids(&all), vec!["event-00000", "event-00002", "event-00003"]);
        assert_eq!(spool.total_bytes(), 0);
    }

    #[test]
    fn names_are_parsed_strictly() {
        assert_eq!(parse_segment_name("00000000000000000042.spool"), Some(42));
        assert_eq!(parse_segment_name("42.spool"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.spool"), None);
        assert_eq!(parse_segment_name("00000000000000000042.spool.tmp"), None);
    }
}
