//! The DATA phase's byte stream → the unstuffed message, without I/O.
//!
//! [`DataReader::feed`] takes whatever the socket buffer holds and consumes it in bulk:
//! runs of whole lines are checked in one pass (CR and LF only as CRLF) and copied in
//! spans between line-start dots, so a megabyte message costs a few passes over memory
//! instead of one call and two copies per line. Lines that need a closer look (a bare CR
//! or LF, the size limit near, a line split across reads, everything once oversized) go
//! through [`DataReader::line_piece`] and [`DataReader::end_line`], which define the
//! behaviour; the bulk path only ever takes lines on which both agree (the tests compare
//! them over random inputs and random read sizes).
//!
//! The rules, per line (bytes up to and including LF):
//! - a line longer than its limit (the room left under the maximum size plus 8, or 8
//!   once the message is oversized) is discarded and the message is oversized;
//! - `.` CRLF ends the data;
//! - a line ending in CRLF is kept with one leading dot removed (RFC 5321 §4.5.2) unless
//!   the message is oversized; a CR inside it makes the message invalid (reported after
//!   the terminator); a message growing past the maximum becomes oversized and its bytes
//!   are dropped, so memory never grows past the limit;
//! - a line ending in a bare LF ends the dialogue.
//!
//! End of stream is the caller's (it sees an empty read).
//!
//! A caller may also read the socket straight into the message ([`DataReader::direct`]
//! and [`DataReader::settle`]): regular lines are then checked and unstuffed where they
//! landed, sparing the copy from a read buffer; the bytes of a line not yet complete wait
//! there for the next read, and anything irregular is taken out and goes the way of
//! [`DataReader::feed`].

use crate::index::MessageIndex;

/// Most bytes a bulk pass hands to [`scan_span`] at once, so a bad line late in a big
/// read does not make the whole read be scanned twice per good span.
const BULK_CHUNK: usize = 64 * 1024;

/// How the DATA phase ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DataEnd {
    /// The terminator came and the message is acceptable for the check.
    Message(Vec<u8>),
    /// The terminator came after more than the maximum size: 552.
    Oversized,
    /// The terminator came after a line with a bare CR: 500.
    BareCr,
    /// A line ended with a bare LF: the connection closes without a reply.
    BareLf,
}

/// Receives one message's data.
#[derive(Debug)]
pub struct DataReader {
    /// `max_message_size`.
    max: usize,
    /// The unstuffed message so far; once oversized, only the current short line.
    data: Vec<u8>,
    /// More than `max` bytes arrived (or a line longer than its limit).
    oversized: bool,
    /// A kept line held a CR that was not part of its CRLF.
    bare_cr: bool,
    /// Whether a line has begun and not yet ended.
    in_line: bool,
    /// Bytes of the current line consumed so far (its leading dot included).
    line_len: usize,
    /// The current line's limit, fixed when it began.
    limit: usize,
    /// Where the current line's bytes begin in `data`.
    mark: usize,
    /// The current line began with a dot (not copied to `data`).
    dot: bool,
    /// Offsets of line-start dots in the current bulk span (reused).
    dots: Vec<usize>,
    /// The facts of the message's pages, gathered as each page is filled, while it is
    /// still in the cache.
    index: MessageIndex,
    /// Where bytes read straight into `data` begin that are not yet taken (the start of
    /// a line); `None` when there are none.
    raw_from: Option<usize>,
}

impl DataReader {
    pub fn new(max: usize) -> DataReader {
        DataReader::with_buffer(max, Vec::new())
    }

    /// A reader that puts the message into `buffer` (emptied first), e.g. a finished
    /// message's buffer from [`crate::buffers::MESSAGE_BUFFERS`] whose capacity spares
    /// reallocations.
    pub fn with_buffer(max: usize, mut buffer: Vec<u8>) -> DataReader {
        buffer.clear();
        DataReader {
            max,
            data: buffer,
            oversized: false,
            bare_cr: false,
            in_line: false,
            line_len: 0,
            limit: 0,
            mark: 0,
            dot: false,
            dots: Vec::new(),
            index: MessageIndex::default(),
            raw_from: None,
        }
    }

    /// The index of the message [`DataEnd::Message`] returned (empty before).
    pub fn take_index(&mut self) -> MessageIndex {
        std::mem::take(&mut self.index)
    }

    /// Consumes a prefix of `input`; returns its length and, when the data ended within
    /// it, how. Bytes after the end (pipelined commands) are left unconsumed.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<DataEnd>) {
        self.take_raw_line();
        let fed = self.consume(input);
        if fed.1.is_none() && !self.oversized {
            // The pages this read filled, just written.
            self.index.extend(&self.data);
        }
        fed
    }

    /// Room for a read of at most `chunk` bytes straight into the message, when the
    /// reader can take them in place: at a line start, not oversized, and `chunk` more
    /// bytes within the maximum size (so no line in them can be too long). The read
    /// appends to the returned buffer; [`DataReader::settle`] then takes the bytes.
    pub fn direct(&mut self, chunk: usize) -> Option<bytes::buf::Limit<&mut Vec<u8>>> {
        if chunk == 0
            || self.in_line
            || self.oversized
            || self.data.len().saturating_add(chunk) > self.max
        {
            return None;
        }
        self.raw_from.get_or_insert(self.data.len());
        // A recycled buffer's spare room is used as it is, in smaller reads near its end,
        // rather than reallocated (and the message copied) for a whole chunk.
        if self.data.capacity() - self.data.len() <= chunk / 4 {
            grow(&mut self.data, chunk);
        }
        let room = chunk.min(self.data.capacity() - self.data.len());
        Some(bytes::BufMut::limit(&mut self.data, room))
    }

    /// Takes the bytes a read appended to the buffer [`DataReader::direct`] gave: whole
    /// regular lines in place (stuffed dots removed by moving what follows), a partial
    /// last line left to be completed by the next read, anything irregular taken out and
    /// fed. When the data ended, returns how and the bytes after the terminator.
    pub fn settle(&mut self) -> Option<(DataEnd, Vec<u8>)> {
        let start = self.raw_from?;
        let raw = self.data.get(start..).unwrap_or_default();
        // Only a partial line so far: it waits where it is.
        let last_lf = memchr::memrchr(b'\n', raw)?;
        let span = raw.get(..=last_lf).unwrap_or_default();
        let (end, regular) = scan_span(span, &mut self.dots);
        if !regular {
            let raw = self.data.split_off(start);
            self.raw_from = None;
            let (used, end) = self.feed(&raw);
            return end.map(|end| (end, raw.get(used..).unwrap_or_default().to_vec()));
        }
        // Stuffed dots out: each stretch between them moves down over the gap.
        let mut to = start;
        let mut from = start;
        for &dot in &self.dots {
            let at = start + dot;
            self.data.copy_within(from..at, to);
            to += at - from;
            from = at + 1;
        }
        if let Some(dot) = end {
            let at = start + dot;
            self.data.copy_within(from..at, to);
            to += at - from;
            let after = self.data.get(at + 3..).unwrap_or_default().to_vec();
            self.data.truncate(to);
            self.raw_from = None;
            return Some((self.finish(), after));
        }
        // The partial line after the last LF moves down too and stays raw.
        let len = self.data.len();
        self.data.copy_within(from..len, to);
        self.data.truncate(to + (len - from));
        let raw_from = start + last_lf + 1 - self.dots.len();
        self.raw_from = Some(raw_from);
        self.index
            .extend(self.data.get(..raw_from).unwrap_or_default());
        None
    }

    /// Gives a partial line read by [`DataReader::direct`] to the line-by-line path.
    fn take_raw_line(&mut self) {
        if let Some(start) = self.raw_from.take() {
            let raw = self.data.split_off(start);
            // No LF in it ([`DataReader::settle`] took every whole line): the data
            // cannot end here.
            let _ = self.consume(&raw);
        }
    }

    /// [`DataReader::feed`] without the indexing.
    fn consume(&mut self, input: &[u8]) -> (usize, Option<DataEnd>) {
        let mut pos = 0;
        // Line by line up to here, after a bulk pass found something irregular.
        let mut careful_until = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                return (pos, None);
            }
            if !self.in_line && !self.oversized && pos >= careful_until {
                match self.bulk(rest) {
                    Bulk::Took(used) => {
                        pos += used;
                        continue;
                    }
                    Bulk::Ended(used, end) => return (pos + used, Some(end)),
                    Bulk::Careful(len) => careful_until = pos + len,
                    Bulk::Nothing => {}
                }
            }
            let Some(lf) = memchr::memchr(b'\n', rest) else {
                self.line_piece(rest);
                return (input.len(), None);
            };
            self.line_piece(rest.get(..lf).unwrap_or_default());
            pos += lf + 1;
            if let Some(end) = self.end_line() {
                return (pos, Some(end));
            }
        }
    }

    /// Bytes of the current line before its LF (possibly not all of them yet).
    fn line_piece(&mut self, mut piece: &[u8]) {
        if !self.in_line {
            self.in_line = true;
            self.line_len = 0;
            self.dot = false;
            if self.oversized {
                // Only a short line can matter now (the terminator or a bare LF).
                self.data.clear();
                self.limit = 8;
            } else {
                self.limit = self.max.saturating_sub(self.data.len()).saturating_add(8);
            }
            self.mark = self.data.len();
        }
        if piece.is_empty() {
            return;
        }
        let before = self.line_len;
        self.line_len = self.line_len.saturating_add(piece.len());
        if before == 0
            && let Some(rest) = piece.strip_prefix(b".")
        {
            self.dot = true;
            piece = rest;
        }
        if self.line_len > self.limit {
            self.set_oversized();
        } else {
            if !self.oversized {
                grow(&mut self.data, piece.len() + 1);
            }
            self.data.extend_from_slice(piece);
        }
    }

    /// The LF of the current line.
    fn end_line(&mut self) -> Option<DataEnd> {
        self.line_piece(&[]);
        self.in_line = false;
        self.line_len = self.line_len.saturating_add(1);
        if self.line_len > self.limit {
            self.set_oversized();
            return None;
        }
        let content = self.data.get(self.mark..).unwrap_or_default();
        let Some(content) = content.strip_suffix(b"\r") else {
            return Some(DataEnd::BareLf);
        };
        if self.dot && content.is_empty() {
            self.data.truncate(self.mark);
            return Some(self.finish());
        }
        if self.oversized {
            return None;
        }
        self.bare_cr |= memchr::memchr(b'\r', content).is_some();
        self.data.push(b'\n');
        if self.data.len() > self.max {
            self.set_oversized();
        }
        None
    }

    fn set_oversized(&mut self) {
        self.index.clear();
        if self.oversized {
            self.data.clear();
        } else {
            self.oversized = true;
            self.data = Vec::new();
        }
        self.mark = 0;
    }

    fn finish(&mut self) -> DataEnd {
        // The terminator line may have taken back a byte of an indexed page.
        self.index.truncate(self.data.len());
        self.index.extend(&self.data);
        if self.oversized {
            DataEnd::Oversized
        } else if self.bare_cr {
            DataEnd::BareCr
        } else {
            DataEnd::Message(std::mem::take(&mut self.data))
        }
    }

    /// The whole lines at the start of `rest` (at a line start, not oversized) that fit
    /// under the maximum size, if CR and LF occur in them only as CRLF.
    fn bulk(&mut self, rest: &[u8]) -> Bulk {
        let room = self.max.saturating_sub(self.data.len()).min(BULK_CHUNK);
        let window = rest.get(..room.min(rest.len())).unwrap_or_default();
        let Some(last_lf) = memchr::memrchr(b'\n', window) else {
            return Bulk::Nothing;
        };
        let span = window.get(..=last_lf).unwrap_or_default();
        let (end, regular) = scan_span(span, &mut self.dots);
        if !regular {
            return Bulk::Careful(span.len());
        }
        let lines = span.get(..end.unwrap_or(span.len())).unwrap_or_default();
        grow(&mut self.data, lines.len());
        let mut start = 0;
        for &dot in &self.dots {
            self.data
                .extend_from_slice(lines.get(start..dot).unwrap_or_default());
            start = dot + 1;
        }
        self.data
            .extend_from_slice(lines.get(start..).unwrap_or_default());
        match end {
            Some(dot) => Bulk::Ended(dot + 3, self.finish()),
            None => Bulk::Took(span.len()),
        }
    }
}

/// Scans `span` (whole lines from a line start): where the data ends in it, if it does,
/// and whether the lines up to there are regular (CR and LF only as CRLF); the stuffed
/// dots go to `dots`. One pass tells both whether the lines are regular and whether any
/// begins with a dot; only then are the dots looked for (armor has none).
fn scan_span(span: &[u8], dots: &mut Vec<usize>) -> (Option<usize>, bool) {
    let scan = pulp::Arch::new().dispatch(LineScan(span));
    if !scan.dotted {
        dots.clear();
        return (None, scan.regular);
    }
    let end = line_start_dots(span, dots);
    let lines = span.get(..end.unwrap_or(span.len())).unwrap_or_default();
    (end, crlf_only(lines))
}

/// Finds the line-start dots in `span` (whole lines from a line start): the stuffed ones
/// go to `dots` (emptied first), to be dropped; the offset of a `.` CRLF line, which ends
/// the data, is returned (dots after it are not looked for).
fn line_start_dots(span: &[u8], dots: &mut Vec<usize>) -> Option<usize> {
    dots.clear();
    let starts = (span.first() == Some(&b'.'))
        .then_some(0)
        .into_iter()
        .chain(memchr::memmem::find_iter(span, b"\n.").map(|lf| lf + 1));
    for dot in starts {
        if span
            .get(dot..)
            .is_some_and(|line| line.starts_with(b".\r\n"))
        {
            return Some(dot);
        }
        dots.push(dot);
    }
    None
}

/// What a bulk pass did.
enum Bulk {
    /// Consumed this many bytes of whole, regular lines.
    Took(usize),
    /// Consumed this many bytes, the terminator included.
    Ended(usize, DataEnd),
    /// Something irregular in the next this many bytes: take them line by line.
    Careful(usize),
    /// No whole line fits: take the next line by line.
    Nothing,
}

/// Whether CR and LF occur in `lines` (whole lines: not starting within a CRLF, ending
/// with LF) only as CRLF pairs.
fn crlf_only(lines: &[u8]) -> bool {
    pulp::Arch::new().dispatch(LineScan(lines)).regular
}

/// What one pass over whole lines found.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    /// CR and LF only as CRLF pairs.
    regular: bool,
    /// Some line begins with a dot.
    dotted: bool,
}

/// The pass behind [`Scanned`]: branch-free over pairs of neighbouring bytes, which the
/// compiler vectorizes; `pulp` compiles it for the x86-64 baseline and for AVX2 and
/// picks by what the CPU has.
struct LineScan<'a>(&'a [u8]);

impl pulp::WithSimd for LineScan<'_> {
    type Output = Scanned;

    // Inlined into pulp's functions compiled for each instruction set.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> Scanned {
        let lines = self.0;
        let Some((&first, tail)) = lines.split_first() else {
            return Scanned {
                regular: true,
                dotted: false,
            };
        };
        // A flag per lane, looked at once at the end: a fold into one flag would not
        // vectorize.
        const LANES: usize = 32;
        let mut bad = [false; LANES];
        let mut dot = [false; LANES];
        for (here, next) in lines.chunks_exact(LANES).zip(tail.chunks_exact(LANES)) {
            for (((bad, dot), &a), &b) in bad.iter_mut().zip(&mut dot).zip(here).zip(next) {
                *bad |= (a == b'\r') != (b == b'\n');
                *dot |= (a == b'\n') & (b == b'.');
            }
        }
        let mut irregular = bad.contains(&true);
        let mut dotted = dot.contains(&true);
        let done = tail.len() / LANES * LANES;
        let (here, next) = (lines.get(done..), tail.get(done..));
        for (&a, &b) in here
            .unwrap_or_default()
            .iter()
            .zip(next.unwrap_or_default())
        {
            irregular |= (a == b'\r') != (b == b'\n');
            dotted |= (a == b'\n') & (b == b'.');
        }
        Scanned {
            regular: first != b'\n' && !irregular,
            dotted: dotted || first == b'.',
        }
    }
}

/// Makes room for `more` bytes, growing by a quarter instead of doubling: a message just
/// over 1 MiB then holds at most 1.25 MiB, not 2 MiB, on every connection receiving one.
/// The extra reallocations (about ten for 1 MiB) happen only while no finished message's
/// buffer is spare ([`crate::buffers`]).
fn grow(data: &mut Vec<u8>, more: usize) {
    if data.capacity() - data.len() < more {
        data.reserve_exact(more.max(data.len() / 4).max(64 * 1024));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of the module documentation, one line at a time, as the server applied
    /// them before the bulk path: the reference the reader is compared with.
    fn reference(input: &[u8], max: usize) -> (usize, Option<DataEnd>) {
        let mut data = Vec::new();
        let mut oversized = false;
        let mut bare_cr = false;
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            let limit = if oversized {
                8
            } else {
                max.saturating_sub(data.len()).saturating_add(8)
            };
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                return (input.len(), None);
            };
            let line = &rest[..=lf];
            pos += lf + 1;
            if line.len() > limit {
                oversized = true;
                data = Vec::new();
                continue;
            }
            let Some(line) = line.strip_suffix(b"\r\n") else {
                return (pos, Some(DataEnd::BareLf));
            };
            if line == b"." {
                let end = if oversized {
                    DataEnd::Oversized
                } else if bare_cr {
                    DataEnd::BareCr
                } else {
                    DataEnd::Message(data)
                };
                return (pos, Some(end));
            }
            if oversized {
                continue;
            }
            let content = line.strip_prefix(b".").unwrap_or(line);
            bare_cr |= content.contains(&b'\r');
            data.extend_from_slice(content);
            data.extend_from_slice(b"\r\n");
            if data.len() > max {
                oversized = true;
                data = Vec::new();
            }
        }
    }

    /// Feeds `input` in reads of the given sizes (cycled), as a socket would deliver it;
    /// each read holds what was left unconsumed plus the next chunk.
    fn chunked(input: &[u8], max: usize, sizes: &[usize]) -> (usize, Option<DataEnd>) {
        let mut reader = DataReader::new(max);
        let mut consumed = 0;
        let mut available = 0;
        let mut sizes = sizes.iter().cycle();
        loop {
            if available == consumed {
                if available == input.len() {
                    return (consumed, None);
                }
                available = available
                    .saturating_add(*sizes.next().unwrap())
                    .min(input.len());
            }
            let (used, end) = reader.feed(&input[consumed..available]);
            assert!(used > 0 || end.is_some(), "no progress");
            consumed += used;
            assert!(reader.data.len() <= max + 8, "memory past the limit");
            if let Some(DataEnd::Message(message)) = &end {
                // Built read by read, the index is that of the whole message.
                assert_eq!(reader.take_index(), MessageIndex::of(message));
            }
            if end.is_some() {
                return (consumed, end);
            }
        }
    }

    /// Delivers `input` as the server does: straight into the message whenever the
    /// reader offers room for `chunk` bytes and no earlier read is left over, otherwise
    /// through a read buffer; each read takes at most the next size (cycled).
    fn direct(input: &[u8], max: usize, chunk: usize, sizes: &[usize]) -> (usize, Option<DataEnd>) {
        let mut reader = DataReader::new(max);
        let mut read = 0;
        let mut buffered: Vec<u8> = Vec::new();
        let mut sizes = sizes.iter().cycle();
        loop {
            let size = *sizes.next().unwrap();
            let end = if buffered.is_empty()
                && let Some(mut target) = reader.direct(chunk)
            {
                let take = size
                    .min(bytes::BufMut::remaining_mut(&target))
                    .min(input.len() - read);
                if take == 0 {
                    return (read, None);
                }
                bytes::BufMut::put_slice(&mut target, &input[read..read + take]);
                read += take;
                reader.settle().map(|(end, after)| {
                    buffered = after;
                    end
                })
            } else {
                if buffered.is_empty() {
                    let take = size.min(input.len() - read);
                    if take == 0 {
                        return (read, None);
                    }
                    buffered.extend_from_slice(&input[read..read + take]);
                    read += take;
                }
                let (used, end) = reader.feed(&buffered);
                buffered.drain(..used);
                end
            };
            assert!(reader.data.len() <= max + 8, "memory past the limit");
            if let Some(DataEnd::Message(message)) = &end {
                assert_eq!(reader.take_index(), MessageIndex::of(message));
            }
            if let Some(end) = end {
                return (read - buffered.len(), Some(end));
            }
        }
    }

    fn check_all_splits(input: &[u8], max: usize) {
        let expected = reference(input, max);
        for chunk in [1, 2, 5, 64 * 1024] {
            for sizes in [&[usize::MAX][..], &[1], &[3], &[1, 2, 5, 13]] {
                assert_eq!(
                    direct(input, max, chunk, sizes),
                    expected,
                    "direct, chunk {chunk}, sizes {sizes:?}, input {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        for sizes in [
            &[usize::MAX][..],
            &[1],
            &[2],
            &[3],
            &[7],
            &[1, 2, 5, 13],
            &[64 * 1024 + 3],
        ] {
            assert_eq!(
                chunked(input, max, sizes),
                expected,
                "sizes {sizes:?}, input {:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Every single split point.
        for split in 1..input.len() {
            let mut reader = DataReader::new(max);
            let (used, end) = reader.feed(&input[..split]);
            let got = if end.is_some() {
                (used, end)
            } else {
                let (more, end) = reader.feed(&input[used..]);
                (used + more, end)
            };
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn terminator_unstuffing_and_pipelined_rest() {
        let input = b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n";
        assert_eq!(
            reference(input, 100),
            (15, Some(DataEnd::Message(b"a\r\n.b\r\nc\r\n".to_vec())))
        );
        check_all_splits(input, 100);
        check_all_splits(b".\r\n", 100);
        check_all_splits(b"\r\n.\r\n", 100);
        check_all_splits(b"..\r\n.\r\n", 100);
    }

    #[test]
    fn boundary_cases() {
        let cases: &[&[u8]] = &[
            // CRLF split, "\r\n." split, dot line split: covered by every split point.
            b"line one\r\nline two\r\n..dots\r\n.\r\n",
            b"bare\rcr\r\n.\r\n",
            b"cr before crlf\r\r\n.\r\n",
            b".\r\r\n.\r\n",
            b"bare lf\nx\r\n.\r\n",
            b"\n.\r\n",
            b"\r\n\r\n.\r\n",
            b"no terminator\r\n",
            b"partial terminator\r\n.\r",
            b". \r\n.\r\n",
            b"x\r\n.\r\nafter\nbare\r\n",
            b"\r\r\n\r\n.\r\n",
        ];
        for &case in cases {
            check_all_splits(case, 100);
            check_all_splits(case, 5);
        }
    }

    #[test]
    fn size_limit() {
        for max in [0, 1, 3, 8, 9, 10, 11, 12, 20] {
            check_all_splits(b"0123456789\r\n.\r\n", max);
            check_all_splits(b"01234\r\n56789\r\n.\r\n", max);
            // Once oversized: short lines are still read, a short bare LF still closes,
            // a long one does not.
            check_all_splits(b"0123456789abcdef\r\nab\r\n.x\r\n.\r\n", max);
            check_all_splits(b"0123456789abcdef\r\nab\n.\r\n", max);
            check_all_splits(b"0123456789abcdef\r\nabcdefghijk\n.\r\n", max);
            check_all_splits(b"0123456789abcdef\nabc\r\n.\r\n", max);
            check_all_splits(b"abc\r\n0123456789abcdef\n.\r\n", max);
        }
    }

    /// xorshift64*: reproducible without a dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn random_inputs_and_reads_agree_with_the_reference() {
        let alphabet = b"ab.\r\n\r\n\r\n..";
        let mut state = 0x5eed_da7a_u64;
        for round in 0..20_000 {
            let len = (rng(&mut state) % 60) as usize;
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng(&mut state) % alphabet.len() as u64) as usize])
                .collect();
            if round % 2 == 0 {
                input.extend_from_slice(b"\r\n.\r\n");
            }
            let max = (rng(&mut state) % 40) as usize;
            let expected = reference(&input, max);
            let sizes: Vec<usize> = (0..4).map(|_| 1 + (rng(&mut state) % 9) as usize).collect();
            for sizes in [&sizes[..], &[usize::MAX]] {
                assert_eq!(
                    chunked(&input, max, sizes),
                    expected,
                    "max {max}, sizes {sizes:?}, input {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            let chunk = 1 + (rng(&mut state) % 12) as usize;
            assert_eq!(
                direct(&input, max, chunk, &sizes),
                expected,
                "direct, max {max}, chunk {chunk}, sizes {sizes:?}, input {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn line_scan_agrees_with_byte_by_byte_on_every_instruction_set() {
        use pulp::WithSimd;
        let naive = |lines: &[u8]| {
            lines.first() != Some(&b'\n')
                && lines.iter().enumerate().all(|(i, &b)| match b {
                    b'\r' => lines.get(i + 1) == Some(&b'\n'),
                    b'\n' => i > 0 && lines[i - 1] == b'\r',
                    _ => true,
                })
                // The last byte is an LF (whole lines): a CR there has no pair to check.
                || lines.is_empty()
        };
        let alphabet = b"ab.\r\n\r\n";
        let mut state = 0xc71f_0001_u64;
        for round in 0..3000 {
            let len = (rng(&mut state) % 300) as usize;
            let mut lines: Vec<u8> = (0..len)
                .map(|_| {
                    if round % 3 == 0 {
                        alphabet[(rng(&mut state) % alphabet.len() as u64) as usize]
                    } else {
                        b"xyz\r\n"[(rng(&mut state) % 3) as usize]
                    }
                })
                .collect();
            lines.extend_from_slice(b"\r\n");
            if round % 3 == 1 {
                // Regular lines with one stray CR or LF anywhere.
                let at = (rng(&mut state) as usize) % lines.len();
                lines[at] = if round % 2 == 0 { b'\r' } else { b'\n' };
            }
            let expected = Scanned {
                regular: naive(&lines),
                dotted: lines.first() == Some(&b'.') || lines.windows(2).any(|w| w == b"\n."),
            };
            assert_eq!(crlf_only(&lines), expected.regular, "{lines:?}");
            assert_eq!(LineScan(&lines).with_simd(pulp::Scalar::new()), expected);
            #[cfg(target_arch = "x86_64")]
            if let Some(v3) = pulp::x86::V3::try_new() {
                assert_eq!(pulp::Simd::vectorize(v3, LineScan(&lines)), expected);
            }
        }
    }

    #[test]
    fn big_message_in_bulk() {
        let mut input = Vec::new();
        for i in 0..20_000 {
            if i % 1000 == 0 {
                input.extend_from_slice(b"..stuffed\r\n");
            }
            input
                .extend_from_slice(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9w\r\n");
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        for max in [10 << 20, input.len() - 20, 1000] {
            let expected = reference(&input, max);
            for sizes in [&[usize::MAX][..], &[65_536], &[1_000, 7, 40_000], &[4097]] {
                assert_eq!(chunked(&input, max, sizes), expected, "max {max}");
                assert_eq!(direct(&input, max, 65_536, sizes), expected, "max {max}");
            }
        }
    }
}
