//! The SDP parser: splits the body into lines (keeping each line's ending) and reads the fields the
//! media plane needs into the view types of the parent module.

use super::{
    Connection, Direction, Field, Fmtp, Line, MAX_FORMATS, MAX_LINES, MAX_MEDIA, MAX_SDP_BYTES,
    Media, MediaLines, Origin, Rtcp, RtpMap, Sdp, SdpError, SdpErrorKind as K,
};

fn err(line: usize, kind: K) -> SdpError {
    SdpError {
        line: line + 1,
        kind,
    }
}

/// Splits on LF; a CR before the LF belongs to the ending. A body ending with a line ending has no
/// empty last line.
fn split_lines(raw: &[u8]) -> Result<Vec<Line>, SdpError> {
    let mut lines = Vec::with_capacity(raw.iter().filter(|&&b| b == b'\n').count() + 1);
    let mut start = 0;
    while start < raw.len() {
        if lines.len() == MAX_LINES {
            return Err(SdpError {
                line: 0,
                kind: K::TooManyLines,
            });
        }
        let (content_end, end) = match raw[start..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let lf = start + i;
                let ce = if lf > start && raw[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
                (ce, lf + 1)
            }
            None => (raw.len(), raw.len()),
        };
        lines.push(Line {
            start,
            content_end,
            end,
        });
        start = end;
    }
    Ok(lines)
}

/// Whitespace-separated tokens of `s` with their byte offsets in `s`.
fn tokens(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split([' ', '\t'])
        .scan(0usize, |pos, t| {
            let at = *pos;
            *pos += t.len() + 1;
            Some((at, t))
        })
        .filter(|(_, t)| !t.is_empty())
}

fn utf8(bytes: &[u8], line: usize) -> Result<&str, SdpError> {
    std::str::from_utf8(bytes).map_err(|_| err(line, K::NotUtf8))
}

fn parse_connection(value: &str, line: usize, kind: K) -> Result<Connection<'_>, SdpError> {
    let mut t = tokens(value).map(|(_, t)| t);
    let (Some(nettype), Some(addrtype), Some(address), None) =
        (t.next(), t.next(), t.next(), t.next())
    else {
        return Err(err(line, kind));
    };
    Ok(Connection {
        nettype,
        addrtype,
        address,
        line,
    })
}

fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn set_once<T>(slot: &mut Option<T>, value: T, line: usize, field: Field) -> Result<(), SdpError> {
    if slot.is_some() {
        return Err(err(line, K::Duplicate(field)));
    }
    *slot = Some(value);
    Ok(())
}

pub(super) fn parse(raw: &[u8]) -> Result<Sdp<'_>, SdpError> {
    if raw.len() > MAX_SDP_BYTES {
        return Err(SdpError {
            line: 0,
            kind: K::TooLarge,
        });
    }
    let lines = split_lines(raw)?;
    let mut origin: Option<Origin<'_>> = None;
    let mut connection: Option<Connection<'_>> = None;
    let mut direction: Option<Direction> = None;
    let mut session_connection_line = None;
    let mut session_direction_line = None;
    let mut media: Vec<Media<'_>> = Vec::new();
    let mut session_end = lines.len();
    let mut seen_version = false;

    for (i, l) in lines.iter().enumerate() {
        let content = &raw[l.start..l.content_end];
        if content.is_empty() {
            continue;
        }
        if content.len() < 2 || content[1] != b'=' || !content[0].is_ascii_lowercase() {
            return Err(err(i, K::NotTypeValue));
        }
        let value = &content[2..];
        if !seen_version {
            if content != b"v=0" {
                return Err(err(i, K::BadVersion));
            }
            seen_version = true;
            continue;
        }
        match content[0] {
            b'o' => {
                if !media.is_empty() {
                    return Err(err(i, K::BadOrigin));
                }
                let v = utf8(value, i)?;
                let toks: Vec<(usize, &str)> = tokens(v).take(7).collect();
                if toks.len() != 6 {
                    return Err(err(i, K::BadOrigin));
                }
                let version: u64 = parse_digits(toks[2].1).ok_or(err(i, K::BadOrigin))?;
                let vstart = l.start + 2 + toks[2].0;
                set_once(
                    &mut origin,
                    Origin {
                        username: toks[0].1,
                        session_id: toks[1].1,
                        version,
                        nettype: toks[3].1,
                        addrtype: toks[4].1,
                        address: toks[5].1,
                        line: i,
                        version_range: vstart..vstart + toks[2].1.len(),
                    },
                    i,
                    Field::Origin,
                )?;
            }
            b'c' => {
                let c = parse_connection(utf8(value, i)?, i, K::BadConnection)?;
                match media.last_mut() {
                    Some(m) => {
                        set_once(&mut m.lines.connection, i, i, Field::Connection)?;
                        m.connection = Some(c);
                    }
                    None => {
                        set_once(&mut session_connection_line, i, i, Field::Connection)?;
                        connection = Some(c);
                    }
                }
            }
            b'm' => {
                if media.len() == MAX_MEDIA {
                    return Err(err(i, K::TooManyMedia));
                }
                if media.is_empty() {
                    session_end = i;
                }
                if let Some(prev) = media.last_mut() {
                    prev.lines.end = i;
                }
                media.push(parse_media(utf8(value, i)?, i, lines.len())?);
            }
            b'a' => match media.last_mut() {
                Some(m) => parse_media_attribute(m, value, i)?,
                None => {
                    let name = value.split(|&b| b == b':').next().unwrap_or(value);
                    if let Some(d) = Direction::from_name(name) {
                        set_once(&mut session_direction_line, i, i, Field::Direction)?;
                        direction = Some(d);
                    }
                }
            },
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError {
            line: 0,
            kind: K::BadVersion,
        });
    }
    let origin = origin.ok_or(SdpError {
        line: 0,
        kind: K::MissingOrigin,
    })?;
    Ok(Sdp {
        raw,
        lines,
        origin,
        connection,
        direction,
        media,
        session_end,
        session_connection_line,
        session_direction_line,
    })
}

fn parse_media(v: &str, i: usize, line_count: usize) -> Result<Media<'_>, SdpError> {
    let mut t = tokens(v).map(|(_, t)| t);
    let (Some(kind), Some(port), Some(proto)) = (t.next(), t.next(), t.next()) else {
        return Err(err(i, K::BadMedia));
    };
    let (port, port_count) = match port.split_once('/') {
        Some((p, n)) => (p, Some(parse_digits::<u16>(n).ok_or(err(i, K::BadMedia))?)),
        None => (port, None),
    };
    let port: u16 = parse_digits(port).ok_or(err(i, K::BadMedia))?;
    let mut formats = Vec::new();
    for f in t {
        if formats.len() == MAX_FORMATS {
            return Err(err(i, K::TooManyFormats));
        }
        formats.push(f);
    }
    Ok(Media {
        kind,
        port,
        port_count,
        proto,
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime: None,
        rtcp: None,
        rtcp_mux: false,
        direction: None,
        crypto: Vec::new(),
        lines: MediaLines {
            m: i,
            end: line_count,
            ..MediaLines::default()
        },
    })
}

/// Offset of the format token within the line content (`a=` + name + `:`), and its length.
fn format_token(name_len: usize, rest: &str) -> (usize, usize) {
    let len = rest.find([' ', '\t']).unwrap_or(rest.len());
    (2 + name_len + 1, len)
}

fn parse_media_attribute<'a>(m: &mut Media<'a>, value: &'a [u8], i: usize) -> Result<(), SdpError> {
    let (name, rest) = match value.iter().position(|&b| b == b':') {
        Some(p) => (&value[..p], Some(&value[p + 1..])),
        None => (value, None),
    };
    if let Some(d) = Direction::from_name(name) {
        set_once(&mut m.lines.direction, i, i, Field::Direction)?;
        m.direction = Some(d);
        return Ok(());
    }
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("rtcp-mux") {
        set_once(&mut m.lines.rtcp_mux, i, i, Field::RtcpMux)?;
        m.rtcp_mux = true;
    } else if is("crypto") {
        m.lines.crypto.push(i);
        m.crypto.push(rest.unwrap_or(b""));
    } else if is("rtpmap") {
        let rest = utf8(rest.ok_or(err(i, K::BadRtpmap))?, i)?;
        let (pt, enc) = rest.split_once([' ', '\t']).ok_or(err(i, K::BadRtpmap))?;
        let payload_type = super::parse_payload_type(pt).ok_or(err(i, K::BadRtpmap))?;
        let mut parts = enc.trim().split('/');
        let encoding = parts
            .next()
            .filter(|e| !e.is_empty())
            .ok_or(err(i, K::BadRtpmap))?;
        let clock_rate = match parts.next() {
            Some(c) => Some(parse_digits::<u32>(c).ok_or(err(i, K::BadRtpmap))?),
            None => None,
        };
        let channels = match parts.next() {
            Some(c) => Some(parse_digits::<u16>(c).ok_or(err(i, K::BadRtpmap))?),
            None => None,
        };
        if parts.next().is_some() {
            return Err(err(i, K::BadRtpmap));
        }
        let (off, len) = format_token(name.len(), rest);
        m.lines.format_scoped.push((i, off, len));
        m.rtpmaps.push(RtpMap {
            payload_type,
            encoding,
            clock_rate,
            channels,
        });
    } else if is("fmtp") {
        let rest = utf8(rest.ok_or(err(i, K::BadFmtp))?, i)?;
        let (format, params) = match rest.split_once([' ', '\t']) {
            Some((f, p)) => (f, p.trim_start()),
            None => (rest, ""),
        };
        if format.is_empty() {
            return Err(err(i, K::BadFmtp));
        }
        let (off, len) = format_token(name.len(), rest);
        m.lines.format_scoped.push((i, off, len));
        m.fmtps.push(Fmtp { format, params });
    } else if is("rtcp-fb") {
        if let Some(rest) = rest.and_then(|r| std::str::from_utf8(r).ok()) {
            let (off, len) = format_token(name.len(), rest);
            m.lines.format_scoped.push((i, off, len));
        }
    } else if is("ptime") {
        let rest = utf8(rest.ok_or(err(i, K::BadPtime))?, i)?.trim();
        let whole = match rest.split_once('.') {
            Some((w, frac)) if frac.bytes().all(|b| b.is_ascii_digit()) => w,
            Some(_) => return Err(err(i, K::BadPtime)),
            None => rest,
        };
        let ms = parse_digits::<u32>(whole).ok_or(err(i, K::BadPtime))?;
        set_once(&mut m.lines.ptime, i, i, Field::Ptime)?;
        m.ptime = Some(ms);
    } else if is("rtcp") {
        let rest = utf8(rest.ok_or(err(i, K::BadRtcp))?, i)?;
        let (port, addr) = match rest.trim().split_once([' ', '\t']) {
            Some((p, a)) => (p, Some(a)),
            None => (rest.trim(), None),
        };
        let port = parse_digits::<u16>(port).ok_or(err(i, K::BadRtcp))?;
        let connection = match addr {
            Some(a) => Some(parse_connection(a, i, K::BadRtcp)?),
            None => None,
        };
        set_once(&mut m.lines.rtcp, i, i, Field::Rtcp)?;
        m.rtcp = Some(Rtcp { port, connection });
    }
    Ok(())
}
