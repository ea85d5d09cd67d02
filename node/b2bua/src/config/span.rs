//! Where things are in the file: field paths, and their lines looked up in toml's spanned
//! document tree (`toml::de::DeTable`), so that validation can point at the offending value
//! without wrapping every raw field in `Spanned`.

use std::fmt;
use std::ops::Range;

use toml::de::DeValue;

use super::error::Location;

/// One step of a field path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A field path like `route[1].trunks[0]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FieldPath(Vec<Seg>);

impl FieldPath {
    /// The path extended by a key.
    pub fn k(&self, key: &'static str) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key));
        FieldPath(segs)
    }

    /// The path extended by an array index.
    pub fn i(&self, index: usize) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if n == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A parsed document with its text and file name: turns field paths and byte offsets into
/// [`Location`]s.
pub(super) struct Doc<'a> {
    file: &'a str,
    text: &'a str,
    root: DeValue<'a>,
}

impl<'a> Doc<'a> {
    /// Wraps a parsed document.
    pub fn new(file: &'a str, text: &'a str, root: DeValue<'a>) -> Self {
        Self { file, text, root }
    }

    /// The location of the value at `path`; when the path is not in the document (a missing
    /// key, a default), the location of the deepest table on the path that is.
    pub fn locate(&self, path: &FieldPath) -> Location {
        let mut span = 0..0;
        let mut value = &self.root;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(key) => value.get(*key),
                Seg::Index(i) => value.get(*i),
            };
            match next {
                Some(spanned) => {
                    span = spanned.span();
                    value = spanned.get_ref();
                }
                None => break,
            }
        }
        location(self.file, self.text, span.start, path.to_string())
    }

    /// The location of a byte offset, with the path of the deepest key or value there.
    pub fn locate_offset(&self, offset: usize) -> Location {
        let mut path = String::new();
        path_at(&self.root, offset, &mut path);
        location(self.file, self.text, offset, path)
    }
}

/// A location from a byte offset into `text`.
pub(super) fn location(file: &str, text: &str, offset: usize, field: String) -> Location {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    Location {
        file: file.to_owned(),
        line,
        column,
        field,
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

/// Appends to `path` the path of the deepest key or value of `value` whose span contains
/// `offset`; returns whether anything was found.
fn path_at(value: &DeValue<'_>, offset: usize, path: &mut String) -> bool {
    match value {
        DeValue::Table(table) => {
            for (key, child) in table.iter() {
                let mark = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.get_ref());
                if contains(&key.span(), offset) {
                    return true;
                }
                if path_at(child.get_ref(), offset, path) || contains(&child.span(), offset) {
                    return true;
                }
                path.truncate(mark);
            }
            false
        }
        DeValue::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let mark = path.len();
                path.push_str(&format!("[{i}]"));
                if path_at(child.get_ref(), offset, path) || contains(&child.span(), offset) {
                    return true;
                }
                path.truncate(mark);
            }
            false
        }
        _ => false,
    }
}
