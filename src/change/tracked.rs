//! Change tracking: what an outside tracker says changed in NEW, so that
//! only those bytes are read.
//!
//! Two inputs are understood, both streamed with bounded memory:
//!
//! - a **range list**: lines `OFFSET LENGTH` in bytes (decimal, or hex with
//!   `0x`); blank lines and lines starting with `#` are skipped;
//! - **`thin_delta` XML**, plain or `--verbose`: ranges count thin chunks of
//!   `data_block_size` 512-byte sectors (from the `superblock` element);
//!   `same` ranges are unchanged, `different` and `right_only` changed,
//!   `left_only` became unmapped (reads as zeros in NEW).
//!
//! [`TrackedRuns`] checks that runs arrive in increasing order without
//! overlap (a tracker that lists a range twice or out of order is not
//! trusted) and merges touching runs of one kind.

use std::io::BufRead;

use super::Run;

/// What a tracked run says about NEW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackedKind {
    /// NEW holds new data here: it must be read.
    Changed,
    /// The range is no longer mapped: NEW reads as zeros, nothing to read.
    Unmapped,
}

/// A run of NEW reported by a change tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedRun {
    /// Where.
    pub run: Run,
    /// What happened there.
    pub kind: TrackedKind,
}

/// Runs from any change tracker, in increasing order.
pub type RunStream = Box<dyn Iterator<Item = Result<TrackedRun, TrackError>> + Send>;

/// Errors of change tracking.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// A line or element of a change list is malformed.
    #[error("{what}, line {line}: {reason}")]
    Parse {
        /// The list's name.
        what: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// Runs out of order or overlapping.
    #[error("{what}: range at byte {offset} starts before the previous range ends (byte {end}); ranges must be increasing and must not overlap")]
    Order {
        /// The list's name.
        what: String,
        /// Offending offset.
        offset: u64,
        /// End of the run before.
        end: u64,
    },
    /// Reading the list failed.
    #[error("read {what}: {source}")]
    Io {
        /// The list's name.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (`thin_delta`, `lvs`, `dmsetup`) failed.
    #[error("{0}")]
    Tool(String),
}

/// A validated stream of tracked runs: increasing, non-overlapping,
/// touching runs of one kind merged.
#[allow(missing_debug_implementations)]
pub struct TrackedRuns {
    what: String,
    inner: Box<dyn Iterator<Item = Result<TrackedRun, TrackError>> + Send>,
    pending: Option<TrackedRun>,
    last_end: u64,
    done: bool,
}

impl TrackedRuns {
    /// Wraps raw runs (in the tracker's order) from the list named `what`.
    pub fn new(
        what: impl Into<String>,
        inner: impl Iterator<Item = Result<TrackedRun, TrackError>> + Send + 'static,
    ) -> TrackedRuns {
        TrackedRuns {
            what: what.into(),
            inner: Box::new(inner),
            pending: None,
            last_end: 0,
            done: false,
        }
    }

    /// Reads a range list or `thin_delta` XML, whichever `reader` holds
    /// (XML when its first non-blank byte is `<`).
    pub fn parse(what: impl Into<String>, reader: impl BufRead + Send + 'static) -> TrackedRuns {
        let what = what.into();
        let mut reader = reader;
        let xml = match first_significant_byte(&mut reader) {
            Ok(b) => b == Some(b'<'),
            Err(source) => {
                let err = TrackError::Io {
                    what: what.clone(),
                    source,
                };
                return TrackedRuns::new(what, std::iter::once(Err(err)));
            }
        };
        if xml {
            TrackedRuns::new(what.clone(), ThinDeltaXml::new(what, reader))
        } else {
            TrackedRuns::new(what.clone(), RangeList::new(what, reader))
        }
    }

    /// The list's name, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    fn pull(&mut self) -> Result<Option<TrackedRun>, TrackError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(next) = self.inner.next().transpose()? else {
                self.done = true;
                return Ok(None);
            };
            if next.run.len == 0 {
                continue;
            }
            if next.run.offset < self.last_end {
                return Err(TrackError::Order {
                    what: self.what.clone(),
                    offset: next.run.offset,
                    end: self.last_end,
                });
            }
            self.last_end = next.run.end();
            return Ok(Some(next));
        }
    }
}

impl Iterator for TrackedRuns {
    type Item = Result<TrackedRun, TrackError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.pull() {
                Err(e) => {
                    self.done = true;
                    self.pending = None;
                    return Some(Err(e));
                }
                Ok(None) => return self.pending.take().map(Ok),
                Ok(Some(run)) => match &mut self.pending {
                    Some(p) if p.kind == run.kind && p.run.end() == run.run.offset => {
                        p.run.len += run.run.len;
                    }
                    Some(_) => return self.pending.replace(run).map(Ok),
                    None => self.pending = Some(run),
                },
            }
        }
    }
}

fn first_significant_byte(reader: &mut impl BufRead) -> std::io::Result<Option<u8>> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                reader.consume(i);
                return Ok(Some(b));
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Longest line or XML tag accepted: no legitimate one comes near.
const MAX_ITEM: usize = 64 * 1024;

/// `OFFSET LENGTH` lines.
struct RangeList<R> {
    what: String,
    reader: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> RangeList<R> {
    fn new(what: String, reader: R) -> Self {
        RangeList {
            what,
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> TrackError {
        TrackError::Parse {
            what: self.what.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }

    fn next_run(&mut self) -> Result<Option<TrackedRun>, TrackError> {
        loop {
            self.buf.clear();
            let n = read_line_bounded(&mut self.reader, &mut self.buf).map_err(|source| {
                TrackError::Io {
                    what: self.what.clone(),
                    source,
                }
            })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.len() > MAX_ITEM {
                return Err(self.err("line too long"));
            }
            let text = std::str::from_utf8(&self.buf).map_err(|_| self.err("not text"))?;
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let mut fields = text.split_ascii_whitespace();
            let (Some(offset), Some(len), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(self.err(format!("expected `OFFSET LENGTH`, found {text:?}")));
            };
            let offset =
                parse_number(offset).ok_or_else(|| self.err(format!("bad offset {offset:?}")))?;
            let len = parse_number(len).ok_or_else(|| self.err(format!("bad length {len:?}")))?;
            if offset.checked_add(len).is_none() {
                return Err(self.err("range ends past 2^64"));
            }
            return Ok(Some(TrackedRun {
                run: Run { offset, len },
                kind: TrackedKind::Changed,
            }));
        }
    }
}

impl<R: BufRead> Iterator for RangeList<R> {
    type Item = Result<TrackedRun, TrackError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_run().transpose()
    }
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Reads one line (without bounding the caller's memory past
/// [`MAX_ITEM`] + one buffer).
fn read_line_bounded(reader: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if out.len() <= MAX_ITEM {
            out.extend_from_slice(&buf[..take]);
        }
        reader.consume(take);
        total += take;
        if end {
            return Ok(total);
        }
    }
}

/// `thin_delta` output, one element at a time.
struct ThinDeltaXml<R> {
    what: String,
    reader: R,
    line: u64,
    /// Bytes per thin chunk, once the superblock was seen.
    chunk_bytes: Option<u64>,
    /// The verbose form's enclosing `same`/`different`/... element.
    section: Option<Option<TrackedKind>>,
    seen_diff: bool,
    ended: bool,
    tag: Vec<u8>,
}

impl<R: BufRead> ThinDeltaXml<R> {
    fn new(what: String, reader: R) -> Self {
        ThinDeltaXml {
            what,
            reader,
            line: 1,
            chunk_bytes: None,
            section: None,
            seen_diff: false,
            ended: false,
            tag: Vec::new(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> TrackError {
        TrackError::Parse {
            what: self.what.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }

    /// The next tag's text between `<` and `>`, or `None` at the end.
    fn next_tag(&mut self) -> Result<Option<()>, TrackError> {
        self.tag.clear();
        let io = |what: &str, source| TrackError::Io {
            what: what.to_string(),
            source,
        };
        // Skip text up to '<'.
        loop {
            let buf = self.reader.fill_buf().map_err(|e| io(&self.what, e))?;
            if buf.is_empty() {
                return Ok(None);
            }
            let found = buf.iter().position(|&b| b == b'<');
            let skip = found.map_or(buf.len(), |i| i);
            let skipped = &buf[..skip];
            self.line += skipped.iter().filter(|&&b| b == b'\n').count() as u64;
            if skipped.iter().any(|b| !b.is_ascii_whitespace()) {
                return Err(self.err("text outside an element"));
            }
            self.reader.consume(skip + usize::from(found.is_some()));
            if found.is_some() {
                break;
            }
        }
        loop {
            let buf = self.reader.fill_buf().map_err(|e| io(&self.what, e))?;
            if buf.is_empty() {
                return Err(self.err("input ends inside an element"));
            }
            let found = buf.iter().position(|&b| b == b'>');
            let take = found.map_or(buf.len(), |i| i);
            self.tag.extend_from_slice(&buf[..take]);
            self.reader.consume(take + usize::from(found.is_some()));
            if self.tag.len() > MAX_ITEM {
                return Err(self.err("element too long"));
            }
            if found.is_some() {
                let newlines = self.tag.iter().filter(|&&b| b == b'\n').count() as u64;
                self.line += newlines;
                return Ok(Some(()));
            }
        }
    }

    fn next_run(&mut self) -> Result<Option<TrackedRun>, TrackError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if self.next_tag()?.is_none() {
                if !self.seen_diff {
                    return Err(self.err("no <diff> element: is this thin_delta output?"));
                }
                return Ok(None);
            }
            let tag = std::str::from_utf8(&self.tag)
                .map_err(|_| self.err("element is not UTF-8"))?
                .to_string();
            let element = Element::parse(&tag).map_err(|r| self.err(r))?;
            if element.special {
                continue;
            }
            match (element.name, element.closing) {
                ("superblock", false) => {
                    let sectors = element
                        .number("data_block_size")
                        .map_err(|r| self.err(r))?
                        .ok_or_else(|| self.err("superblock has no data_block_size"))?;
                    if sectors == 0 || sectors > (1 << 30) {
                        return Err(self.err(format!("data_block_size {sectors} is out of range")));
                    }
                    self.chunk_bytes = Some(sectors * 512);
                }
                ("superblock", true) => {
                    if !self.seen_diff {
                        return Err(self.err("no <diff> element: is this thin_delta output?"));
                    }
                    self.ended = true;
                }
                ("diff", false) => {
                    if self.chunk_bytes.is_none() {
                        return Err(self.err("<diff> before <superblock>"));
                    }
                    if self.seen_diff {
                        return Err(self.err("more than one <diff> element"));
                    }
                    self.seen_diff = true;
                }
                ("diff", true) => {}
                (name @ ("same" | "different" | "right_only" | "left_only"), closing) => {
                    if !self.seen_diff {
                        return Err(self.err(format!("<{name}> outside <diff>")));
                    }
                    let kind = section_kind(name);
                    if closing {
                        self.section = None;
                    } else if element.self_closing {
                        if let Some(run) = self.range(&element, kind)? {
                            return Ok(Some(run));
                        }
                    } else {
                        if self.section.is_some() {
                            return Err(self.err(format!("<{name}> inside another section")));
                        }
                        self.section = Some(kind);
                    }
                }
                ("range", false) => {
                    let Some(kind) = self.section else {
                        return Err(self.err("<range> outside same/different/right_only/left_only"));
                    };
                    if let Some(run) = self.range(&element, kind)? {
                        return Ok(Some(run));
                    }
                }
                (name, _) => return Err(self.err(format!("unexpected element <{name}>"))),
            }
        }
    }

    fn range(
        &self,
        element: &Element<'_>,
        kind: Option<TrackedKind>,
    ) -> Result<Option<TrackedRun>, TrackError> {
        let begin = element
            .number("begin")
            .map_err(|r| self.err(r))?
            .ok_or_else(|| self.err("range has no begin"))?;
        let length = element
            .number("length")
            .map_err(|r| self.err(r))?
            .ok_or_else(|| self.err("range has no length"))?;
        let Some(kind) = kind else { return Ok(None) };
        let chunk = self.chunk_bytes.unwrap_or(512);
        let (Some(offset), Some(len)) = (begin.checked_mul(chunk), length.checked_mul(chunk))
        else {
            return Err(self.err("range does not fit in 64-bit byte offsets"));
        };
        if offset.checked_add(len).is_none() {
            return Err(self.err("range ends past 2^64"));
        }
        Ok(Some(TrackedRun {
            run: Run { offset, len },
            kind,
        }))
    }
}

fn section_kind(name: &str) -> Option<TrackedKind> {
    match name {
        "different" | "right_only" => Some(TrackedKind::Changed),
        "left_only" => Some(TrackedKind::Unmapped),
        _ => None,
    }
}

impl<R: BufRead> Iterator for ThinDeltaXml<R> {
    type Item = Result<TrackedRun, TrackError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_run().transpose()
    }
}

/// One XML tag, split into name and attributes (only what `thin_delta`
/// writes: no entities in numbers, attributes quoted with `"` or `'`).
struct Element<'a> {
    name: &'a str,
    closing: bool,
    self_closing: bool,
    /// `<?xml ...?>` and `<!-- ... -->`.
    special: bool,
    attributes: Vec<(&'a str, &'a str)>,
}

impl<'a> Element<'a> {
    fn parse(tag: &'a str) -> Result<Element<'a>, String> {
        if tag.starts_with('?') || tag.starts_with('!') {
            return Ok(Element {
                name: "",
                closing: false,
                self_closing: false,
                special: true,
                attributes: Vec::new(),
            });
        }
        let (closing, body) = match tag.strip_prefix('/') {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let (self_closing, body) = match body.trim_end().strip_suffix('/') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let body = body.trim();
        let name_end = body
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(body.len());
        let name = &body[..name_end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad element name {name:?}"));
        }
        let mut attributes = Vec::new();
        let mut rest = body[name_end..].trim_start();
        while !rest.is_empty() {
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("attribute without value in <{name}>"))?;
            let key = rest[..eq].trim();
            let after = rest[eq + 1..].trim_start();
            let quote = after
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
                .ok_or_else(|| format!("unquoted attribute {key:?} in <{name}>"))?;
            let value_end = after[1..]
                .find(quote)
                .ok_or_else(|| format!("unterminated attribute {key:?} in <{name}>"))?;
            attributes.push((key, &after[1..1 + value_end]));
            rest = after[1 + value_end + 1..].trim_start();
        }
        if closing && (self_closing || !attributes.is_empty()) {
            return Err(format!("malformed closing element </{name}>"));
        }
        Ok(Element {
            name,
            closing,
            self_closing,
            special: false,
            attributes,
        })
    }

    fn number(&self, key: &str) -> Result<Option<u64>, String> {
        match self.attributes.iter().find(|(k, _)| *k == key) {
            None => Ok(None),
            Some((_, v)) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("attribute {key}={v:?} of <{}> is not a number", self.name)),
        }
    }
}

#[cfg(test)]
mod tests;
