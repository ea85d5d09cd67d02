//! Rewriting a parsed SDP body: collect edits, then [`Rewrite::finish`] renders the body once.
//!
//! Only the lines an edit names change; every other line is copied from the original bytes with
//! its own ending, in its place. A replaced line keeps its original ending; an inserted line takes
//! the ending of its section's first line (so a CRLF body stays CRLF and an LF body stays LF). New
//! attribute lines go after the last non-empty line of their `m=` section; a new media-level `c=`
//! goes after the `m=` line (and its `i=` line, if any), as RFC 8866 orders them.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Direction, Sdp, parse_payload_type};

/// A rewrite that cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// There is no `m=` section with this index.
    #[error("no m= section {0}")]
    NoSuchMedia(usize),
    /// The section does not carry RTP, so its formats are not payload types.
    #[error("the m= section is not RTP")]
    NotRtp,
    /// A payload type to keep is not on the `m=` line.
    #[error("payload type {0} is not offered on the m= line")]
    UnknownPayload(u8),
    /// A payload type would appear twice on the `m=` line.
    #[error("payload type {0} appears twice")]
    DuplicatePayload(u8),
    /// A payload type above 127.
    #[error("payload type {0} is out of range")]
    PayloadOutOfRange(u8),
    /// A value to write is empty or holds whitespace or a line break where it must not.
    #[error("a value to write is not a single SDP token")]
    BadValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    Keep,
    Replace(Vec<u8>),
    Delete,
}

#[derive(Debug, Clone, Default)]
struct MediaLineEdit {
    port: Option<u16>,
    proto: Option<String>,
    formats: Option<Vec<u8>>,
}

/// Edits to an [`Sdp`], rendered by [`Rewrite::finish`].
#[derive(Debug, Clone)]
pub struct Rewrite<'s, 'a> {
    sdp: &'s Sdp<'a>,
    edits: Vec<Edit>,
    /// (insert after this line, order class, text without ending): at one place, `c=` lines
    /// (class 0) come before attributes (class 1), each class in insertion order.
    inserts: Vec<(usize, u8, Vec<u8>)>,
    media_lines: Vec<MediaLineEdit>,
    version: Option<u64>,
}

fn connection_line(ip: IpAddr) -> Vec<u8> {
    let mut s = String::with_capacity(24);
    let _ = write!(s, "c={}", connection_value(ip));
    s.into_bytes()
}

fn connection_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("IN IP4 {v4}"),
        IpAddr::V6(v6) => format!("IN IP6 {v6}"),
    }
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && !s
            .iter()
            .any(|&b| b == b' ' || b == b'\t' || b == b'\r' || b == b'\n')
}

impl<'s, 'a> Rewrite<'s, 'a> {
    pub(super) fn new(sdp: &'s Sdp<'a>) -> Self {
        Rewrite {
            sdp,
            edits: vec![Edit::Keep; sdp.lines.len()],
            inserts: Vec::new(),
            media_lines: vec![MediaLineEdit::default(); sdp.media.len()],
            version: None,
        }
    }

    /// Sets the `o=` session version.
    pub fn origin_version(&mut self, version: u64) -> &mut Self {
        self.version = Some(version);
        self
    }

    /// Sets the `o=` session version to the parsed one plus one (RFC 3264 §8: every changed offer
    /// or answer increments it); saturates at `u64::MAX`.
    pub fn bump_origin_version(&mut self) -> &mut Self {
        self.origin_version(self.sdp.origin.version.saturating_add(1))
    }

    /// Points every `c=` line (session and media level) at `ip`. When the session has no `c=`,
    /// a section without its own gets one.
    pub fn connection(&mut self, ip: IpAddr) -> &mut Self {
        if let Some(l) = self.sdp.session_connection_line {
            self.edits[l] = Edit::Replace(connection_line(ip));
        }
        for index in 0..self.sdp.media.len() {
            let m = &self.sdp.media[index];
            if m.lines.connection.is_some() || self.sdp.session_connection_line.is_none() {
                self.set_media_connection(index, ip);
            }
        }
        self
    }

    fn set_media_connection(&mut self, index: usize, ip: IpAddr) {
        let lines = &self.sdp.media[index].lines;
        match lines.connection {
            Some(l) => self.edits[l] = Edit::Replace(connection_line(ip)),
            None => {
                let mut after = lines.m;
                if lines.m + 1 < lines.end
                    && self
                        .sdp
                        .line(lines.m + 1)
                        .is_some_and(|t| t.starts_with(b"i="))
                {
                    after = lines.m + 1;
                }
                self.inserts.push((after, 0, connection_line(ip)));
            }
        }
    }

    /// Edits the `m=` section `index`.
    pub fn media(&mut self, index: usize) -> Result<MediaRewrite<'_, 's, 'a>, RewriteError> {
        if index >= self.sdp.media.len() {
            return Err(RewriteError::NoSuchMedia(index));
        }
        Ok(MediaRewrite { rw: self, index })
    }

    /// The line ending new lines in a section take.
    fn eol_for(&self, line: usize) -> &'a [u8] {
        let raw = self.sdp.raw;
        let pick = |l: &super::Line| &raw[l.content_end..l.end];
        if let Some(l) = self.sdp.lines.get(line).filter(|l| l.end > l.content_end) {
            return pick(l);
        }
        self.sdp
            .lines
            .iter()
            .find(|l| l.end > l.content_end)
            .map(pick)
            .unwrap_or(b"\r\n")
    }

    fn render_media_line(&self, index: usize) -> Option<Vec<u8>> {
        let e = &self.media_lines[index];
        if e.port.is_none() && e.proto.is_none() && e.formats.is_none() {
            return None;
        }
        let m = &self.sdp.media[index];
        let mut s = String::with_capacity(64);
        let _ = write!(s, "m={} ", m.kind);
        match (e.port, m.port_count) {
            (Some(p), _) => {
                let _ = write!(s, "{p}");
            }
            (None, Some(n)) => {
                let _ = write!(s, "{}/{n}", m.port);
            }
            (None, None) => {
                let _ = write!(s, "{}", m.port);
            }
        }
        let _ = write!(s, " {}", e.proto.as_deref().unwrap_or(m.proto));
        match &e.formats {
            Some(f) => f.iter().for_each(|pt| {
                let _ = write!(s, " {pt}");
            }),
            None => m.formats.iter().for_each(|f| {
                let _ = write!(s, " {f}");
            }),
        }
        Some(s.into_bytes())
    }

    /// Renders the rewritten body.
    pub fn finish(&self) -> Vec<u8> {
        let sdp = self.sdp;
        let raw = sdp.raw;
        let mut out = Vec::with_capacity(raw.len() + 128);
        let mut inserts: Vec<&(usize, u8, Vec<u8>)> = self.inserts.iter().collect();
        inserts.sort_by_key(|(after, class, _)| (*after, *class));
        let mut next_insert = 0;
        for (i, l) in sdp.lines.iter().enumerate() {
            let eol = &raw[l.content_end..l.end];
            let media_line = sdp
                .media
                .iter()
                .position(|m| m.lines.m == i)
                .and_then(|mi| self.render_media_line(mi));
            let mut written = true;
            if let Some(text) = media_line {
                out.extend_from_slice(&text);
            } else if i == sdp.origin.line && self.version.is_some() {
                let r = &sdp.origin.version_range;
                out.extend_from_slice(&raw[l.start..r.start]);
                let _ = write!(VecWriter(&mut out), "{}", self.version.unwrap_or_default());
                out.extend_from_slice(&raw[r.end..l.content_end]);
            } else {
                match &self.edits[i] {
                    Edit::Keep => out.extend_from_slice(&raw[l.start..l.content_end]),
                    Edit::Replace(text) => out.extend_from_slice(text),
                    Edit::Delete => written = false,
                }
            }
            let mut here = Vec::new();
            while next_insert < inserts.len() && inserts[next_insert].0 == i {
                here.push(&inserts[next_insert].2);
                next_insert += 1;
            }
            if here.is_empty() {
                if written {
                    out.extend_from_slice(eol);
                }
                continue;
            }
            // A last line without an ending gets one before the inserted lines; the body then
            // ends without one, as it did.
            let new_eol = self.eol_for(i);
            if written {
                out.extend_from_slice(if eol.is_empty() { new_eol } else { eol });
            }
            for (k, text) in here.iter().enumerate() {
                out.extend_from_slice(text);
                let last = k + 1 == here.len();
                out.extend_from_slice(if last && eol.is_empty() { b"" } else { new_eol });
            }
        }
        out
    }

    /// The last non-empty line of media section `index` (where new attributes go).
    fn section_tail(&self, index: usize) -> usize {
        let lines = &self.sdp.media[index].lines;
        (lines.m..lines.end)
            .rev()
            .find(|&l| self.sdp.line(l).is_some_and(|t| !t.is_empty()))
            .unwrap_or(lines.m)
    }
}

/// `fmt::Write` into a byte vector (for integers).
struct VecWriter<'v>(&'v mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Edits to one `m=` section; obtained from [`Rewrite::media`].
#[derive(Debug)]
pub struct MediaRewrite<'r, 's, 'a> {
    rw: &'r mut Rewrite<'s, 'a>,
    index: usize,
}

impl MediaRewrite<'_, '_, '_> {
    /// Sets the `m=` port (a `/<count>` suffix is dropped with it).
    pub fn port(&mut self, port: u16) -> &mut Self {
        self.rw.media_lines[self.index].port = Some(port);
        self
    }

    /// Sets the `m=` transport profile (`RTP/AVP`, `RTP/SAVP`, ...).
    pub fn proto(&mut self, proto: &str) -> Result<&mut Self, RewriteError> {
        if !is_token(proto.as_bytes()) {
            return Err(RewriteError::BadValue);
        }
        self.rw.media_lines[self.index].proto = Some(proto.to_owned());
        Ok(self)
    }

    /// Points this section's `c=` at `ip` (adding one after the `m=` line if it has none).
    pub fn connection(&mut self, ip: IpAddr) -> &mut Self {
        self.rw.set_media_connection(self.index, ip);
        self
    }

    /// Keeps only the payload types `map` names, in its order, renumbered `from → to`: the `m=`
    /// list becomes the `to` values, the `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` lines of kept payload
    /// types get the new number in place (their other bytes unchanged), those of dropped payload
    /// types are removed. `a=rtcp-fb:*` and parameters inside `a=fmtp` (e.g. RFC 2198 redundancy
    /// lists) are not renumbered.
    pub fn payloads(&mut self, map: &[(u8, u8)]) -> Result<&mut Self, RewriteError> {
        let m = &self.rw.sdp.media[self.index];
        let offered = m.payload_types().ok_or(RewriteError::NotRtp)?;
        let mut seen_to = [false; 128];
        let mut seen_from = [false; 128];
        for &(from, to) in map {
            if to > 127 {
                return Err(RewriteError::PayloadOutOfRange(to));
            }
            if !offered.contains(&from) {
                return Err(RewriteError::UnknownPayload(from));
            }
            if std::mem::replace(&mut seen_to[usize::from(to)], true) {
                return Err(RewriteError::DuplicatePayload(to));
            }
            if std::mem::replace(&mut seen_from[usize::from(from)], true) {
                return Err(RewriteError::DuplicatePayload(from));
            }
        }
        let raw = self.rw.sdp.raw;
        for &(line, off, len) in &m.lines.format_scoped {
            let l = &self.rw.sdp.lines[line];
            let content = &raw[l.start..l.content_end];
            let Some(format) = std::str::from_utf8(&content[off..off + len])
                .ok()
                .and_then(parse_payload_type)
            else {
                continue;
            };
            match map.iter().find(|(from, _)| *from == format) {
                None => self.rw.edits[line] = Edit::Delete,
                Some(&(from, to)) if from == to => self.rw.edits[line] = Edit::Keep,
                Some(&(_, to)) => {
                    let mut text = Vec::with_capacity(content.len() + 2);
                    text.extend_from_slice(&content[..off]);
                    let _ = write!(VecWriter(&mut text), "{to}");
                    text.extend_from_slice(&content[off + len..]);
                    self.rw.edits[line] = Edit::Replace(text);
                }
            }
        }
        self.rw.media_lines[self.index].formats = Some(map.iter().map(|&(_, to)| to).collect());
        Ok(self)
    }

    /// Gives payload type `from` (its number in the parsed body) the `a=rtpmap` value `rtpmap`
    /// (`<encoding>/<clock rate>[/<channels>]`) under number `to`: its `a=rtpmap` line is
    /// replaced (or one is added), its `a=fmtp` lines are removed. For G.711 translation, where
    /// the relay offers one law in place of the other. Call it after [`MediaRewrite::payloads`]
    /// with the same `from → to` (or alone when the number stays the same).
    pub fn retype(&mut self, from: u8, to: u8, rtpmap: &str) -> Result<&mut Self, RewriteError> {
        if to > 127 {
            return Err(RewriteError::PayloadOutOfRange(to));
        }
        if rtpmap.is_empty() || !is_token(rtpmap.as_bytes()) {
            return Err(RewriteError::BadValue);
        }
        let m = &self.rw.sdp.media[self.index];
        let offered = m.payload_types().ok_or(RewriteError::NotRtp)?;
        if !offered.contains(&from) {
            return Err(RewriteError::UnknownPayload(from));
        }
        let raw = self.rw.sdp.raw;
        let mut replaced = false;
        for &(line, off, len) in &m.lines.format_scoped {
            let l = &self.rw.sdp.lines[line];
            let content = &raw[l.start..l.content_end];
            let format = std::str::from_utf8(&content[off..off + len])
                .ok()
                .and_then(parse_payload_type);
            if format != Some(from) {
                continue;
            }
            if content.starts_with(b"a=rtpmap:") {
                self.rw.edits[line] = Edit::Replace(format!("a=rtpmap:{to} {rtpmap}").into_bytes());
                replaced = true;
            } else if content.starts_with(b"a=fmtp:") {
                self.rw.edits[line] = Edit::Delete;
            }
        }
        if !replaced {
            let after = self.rw.section_tail(self.index);
            self.rw
                .inserts
                .push((after, 1, format!("a=rtpmap:{to} {rtpmap}").into_bytes()));
        }
        Ok(self)
    }

    fn set_attribute(&mut self, existing: Option<usize>, text: Option<Vec<u8>>) {
        match (existing, text) {
            (Some(l), Some(t)) => self.rw.edits[l] = Edit::Replace(t),
            (Some(l), None) => self.rw.edits[l] = Edit::Delete,
            (None, Some(t)) => {
                let after = self.rw.section_tail(self.index);
                self.rw.inserts.push((after, 1, t));
            }
            (None, None) => {}
        }
    }

    /// Sets (`Some`) or removes (`None`) `a=ptime`.
    pub fn ptime(&mut self, ptime_ms: Option<u32>) -> &mut Self {
        let existing = self.rw.sdp.media[self.index].lines.ptime;
        self.set_attribute(
            existing,
            ptime_ms.map(|p| format!("a=ptime:{p}").into_bytes()),
        );
        self
    }

    /// Sets (`Some((port, address))`) or removes (`None`) `a=rtcp`.
    pub fn rtcp(&mut self, rtcp: Option<(u16, Option<IpAddr>)>) -> &mut Self {
        let existing = self.rw.sdp.media[self.index].lines.rtcp;
        let text = rtcp.map(|(port, ip)| match ip {
            Some(ip) => format!("a=rtcp:{port} {}", connection_value(ip)).into_bytes(),
            None => format!("a=rtcp:{port}").into_bytes(),
        });
        self.set_attribute(existing, text);
        self
    }

    /// Adds or removes `a=rtcp-mux`.
    pub fn rtcp_mux(&mut self, on: bool) -> &mut Self {
        let existing = self.rw.sdp.media[self.index].lines.rtcp_mux;
        if existing.is_some() == on {
            return self;
        }
        self.set_attribute(existing, on.then(|| b"a=rtcp-mux".to_vec()));
        self
    }

    /// Sets the section's direction attribute (replacing its own, or adding one).
    pub fn direction(&mut self, direction: Direction) -> &mut Self {
        let m = &self.rw.sdp.media[self.index];
        if m.direction == Some(direction) {
            return self;
        }
        let existing = m.lines.direction;
        self.set_attribute(
            existing,
            Some(format!("a={}", direction.as_str()).into_bytes()),
        );
        self
    }

    /// Replaces the `a=crypto` lines with `values` (each the text after `a=crypto:`); an empty
    /// slice removes them. The first new line takes the place of the first old one.
    pub fn crypto(&mut self, values: &[&[u8]]) -> Result<&mut Self, RewriteError> {
        if values
            .iter()
            .any(|v| v.is_empty() || v.iter().any(|&b| b == b'\r' || b == b'\n'))
        {
            return Err(RewriteError::BadValue);
        }
        let lines = self.rw.sdp.media[self.index].lines.crypto.clone();
        let line = |v: &[u8]| [b"a=crypto:".as_slice(), v].concat();
        for &l in &lines {
            self.rw.edits[l] = Edit::Delete;
        }
        match lines.first() {
            Some(&first) => {
                if let Some((head, tail)) = values.split_first() {
                    self.rw.edits[first] = Edit::Replace(line(head));
                    for v in tail {
                        self.rw.inserts.push((first, 1, line(v)));
                    }
                }
            }
            None => {
                let after = self.rw.section_tail(self.index);
                for v in values {
                    self.rw.inserts.push((after, 1, line(v)));
                }
            }
        }
        Ok(self)
    }
}
