//! A streaming reader for the plain shape of YAML that large local files have: block mappings
//! and sequences, one-line scalars (plain, or quoted without escapes), one-line flow
//! collections and comments, in printable ASCII. It hands serde each value straight from the
//! text, with no event list or tree of the whole document, so a large file is read in one
//! pass with nothing but the converted entries growing.
//!
//! It is a fast path, not a parser of its own dialect: whatever it does not understand — an
//! anchor, alias, tag or merge key, a multi-line or escaped scalar, a tab, a non-ASCII byte, a
//! second document, a value of an unexpected type, or anything malformed — makes it give up
//! with [`Declined`], and the caller parses the same text with the full YAML loader, whose
//! result and error messages are the reference. What this reader accepts it must read exactly
//! as the full loader does: the `local_yaml` fuzz target and the tests compare the two.
//!
//! Allowed imports: serde only.

use std::borrow::Cow;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Keys this long or longer (with the spaces before their `:`) are left to the full loader,
/// which accepts keys of up to 1024 characters.
const MAX_KEY_LEN: usize = 1000;

/// The text is outside what this reader handles, or is not a valid document: read it with the
/// full loader (which reports the real error, if any).
#[derive(Debug)]
pub(super) struct Declined;

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not read by the block reader")
    }
}

impl std::error::Error for Declined {}

impl serde::de::Error for Declined {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Declined
    }
}

/// Reads the one document in `text` into `seed`, as the full loader's
/// `DeserializeSeed::deserialize(seed, serde_yaml_ng::Deserializer::from_str(text))` would.
pub(super) fn read<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, Declined> {
    // Printable ASCII and line feeds only: no tabs, carriage returns, byte order marks, or
    // characters that YAML treats as line breaks or forbids.
    if !text
        .bytes()
        .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
    {
        return Err(Declined);
    }
    let mut r = Reader {
        text: text.as_bytes(),
        src: text,
        pos: 0,
        line_start: 0,
        flow_depth: 0,
    };
    // An explicit start of the (single) document, alone on its line.
    if r.next_content() == Some(0) && r.rest().starts_with(b"---") && matches!(r.at(3), b'\n' | 0) {
        r.pos += 3;
    }
    let kind = match r.peek_line()? {
        None => Kind::Scalar(Cow::Borrowed(""), Style::Plain),
        Some(col) if r.is_entry() => Kind::BlockSeq(col),
        Some(col) => Kind::BlockMap(col),
    };
    let value = seed.deserialize(Value { r: &mut r, kind })?;
    match r.peek_line()? {
        None => Ok(value),
        Some(_) => Err(Declined),
    }
}

/// A cursor over the validated text. Columns are byte offsets from the line start (the text
/// is ASCII, so they are also character columns).
struct Reader<'de> {
    text: &'de [u8],
    src: &'de str,
    pos: usize,
    line_start: usize,
    /// Open flow collections (`[`, `{`) around the cursor.
    flow_depth: usize,
}

/// How a scalar was written: plain scalars are resolved (null, booleans, integers), quoted
/// ones are always strings.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    Plain,
    Quoted,
}

/// What the value at the cursor is. For collections, the cursor is at the first entry (block)
/// or right after the opening bracket (flow).
enum Kind<'de> {
    Scalar(Cow<'de, str>, Style),
    BlockMap(usize),
    BlockSeq(usize),
    FlowMap,
    FlowSeq,
}

impl<'de> Reader<'de> {
    /// The byte at `pos + ahead`; 0 past the end (the text holds no NUL).
    fn at(&self, ahead: usize) -> u8 {
        self.text.get(self.pos + ahead).copied().unwrap_or(0)
    }

    fn rest(&self) -> &'de [u8] {
        &self.text[self.pos.min(self.text.len())..]
    }

    fn column(&self) -> usize {
        self.pos - self.line_start
    }

    fn skip_spaces(&mut self) -> bool {
        let start = self.pos;
        while self.at(0) == b' ' {
            self.pos += 1;
        }
        self.pos > start
    }

    /// Whether the cursor, after a value and `spaced` (whitespace skipped before it), is at
    /// the end of the line's content: a line break, the end, or a comment.
    fn at_content_end(&self, spaced: bool) -> bool {
        match self.at(0) {
            b'\n' | 0 => true,
            b'#' => spaced,
            _ => false,
        }
    }

    /// Whether the cursor is at a block sequence entry (`-` then a blank).
    fn is_entry(&self) -> bool {
        self.at(0) == b'-' && matches!(self.at(1), b' ' | b'\n' | 0)
    }

    /// Moves to the next line with content (past the rest of this line if it holds only
    /// spaces or a comment, blank lines and comment lines), leaving the cursor at its first
    /// character, and returns its column; `None` at the end of the text. Idempotent.
    fn peek_line(&mut self) -> Result<Option<usize>, Declined> {
        let col = self.next_content();
        // A document marker: another document, or the end of this one.
        if col == Some(0)
            && (self.rest().starts_with(b"---") || self.rest().starts_with(b"..."))
            && matches!(self.at(3), b' ' | b'\n' | 0)
        {
            return Err(Declined);
        }
        Ok(col)
    }

    /// [`Self::peek_line`] without the check for document markers.
    fn next_content(&mut self) -> Option<usize> {
        loop {
            self.skip_spaces();
            match self.at(0) {
                0 => return None,
                b'\n' | b'#' => {
                    let Some(eol) = self.rest().iter().position(|b| *b == b'\n') else {
                        self.pos = self.text.len();
                        return None;
                    };
                    self.pos += eol + 1;
                    self.line_start = self.pos;
                }
                _ => return Some(self.column()),
            }
        }
    }

    /// The value after `key:` (`indent` the key's column) or after `- ` (`indent` the dash's
    /// column, `compact`: it may be a block mapping or sequence starting on the same line).
    fn block_value(&mut self, indent: usize, compact: bool) -> Result<Kind<'de>, Declined> {
        let spaced = self.skip_spaces();
        if self.at_content_end(spaced) {
            // Nothing on this line: a nested block, or an empty (null) value.
            let line = self.peek_line()?;
            let kind = match line {
                Some(col) if col > indent && self.is_entry() => Kind::BlockSeq(col),
                Some(col) if col > indent => Kind::BlockMap(col),
                // `key:` followed by `- ...` at the key's own column.
                Some(col) if col == indent && !compact && self.is_entry() => Kind::BlockSeq(col),
                _ => Kind::Scalar(Cow::Borrowed(""), Style::Plain),
            };
            return Ok(kind);
        }
        let start = self.pos;
        let col = self.column();
        match self.at(0) {
            b'[' => return Ok(self.open_flow(Kind::FlowSeq)),
            b'{' => return Ok(self.open_flow(Kind::FlowMap)),
            _ if compact && self.is_entry() => return Ok(Kind::BlockSeq(col)),
            _ => {}
        }
        let (text, style) = self.scalar(false)?;
        let spaced = self.skip_spaces();
        if self.at(0) == b':' && matches!(self.at(1), b' ' | b'\n' | 0) {
            // `- key: value`: a mapping whose keys sit at this column.
            if !compact {
                return Err(Declined);
            }
            self.pos = start;
            return Ok(Kind::BlockMap(col));
        }
        if !self.at_content_end(spaced) {
            return Err(Declined);
        }
        Ok(Kind::Scalar(text, style))
    }

    /// A value inside a flow collection.
    fn flow_value(&mut self) -> Result<Kind<'de>, Declined> {
        self.skip_spaces();
        match self.at(0) {
            b'[' => Ok(self.open_flow(Kind::FlowSeq)),
            b'{' => Ok(self.open_flow(Kind::FlowMap)),
            _ => {
                let (text, style) = self.scalar(true)?;
                Ok(Kind::Scalar(text, style))
            }
        }
    }

    fn open_flow(&mut self, kind: Kind<'de>) -> Kind<'de> {
        self.pos += 1;
        self.flow_depth += 1;
        kind
    }

    /// Past the closing bracket of a flow collection; the outermost must end its line.
    fn close_flow(&mut self) -> Result<(), Declined> {
        self.pos += 1;
        self.flow_depth -= 1;
        if self.flow_depth == 0 {
            let spaced = self.skip_spaces();
            if !self.at_content_end(spaced) {
                return Err(Declined);
            }
        }
        Ok(())
    }

    /// A key and its `:` (followed by a blank), in a block or flow mapping.
    fn key(&mut self, flow: bool) -> Result<(Cow<'de, str>, Style), Declined> {
        let start = self.pos;
        let (text, style) = self.scalar(flow)?;
        self.skip_spaces();
        if self.pos - start >= MAX_KEY_LEN || (style == Style::Plain && text == "<<") {
            // Overlong keys are the full loader's error; `<<` is a merge key.
            return Err(Declined);
        }
        if self.at(0) != b':' || !matches!(self.at(1), b' ' | b'\n' | 0) {
            return Err(Declined);
        }
        self.pos += 1;
        Ok((text, style))
    }

    /// A one-line scalar at the cursor, which stops after it (plain: before any trailing
    /// spaces). Declines quoted scalars with escapes or line breaks, and plain scalars that
    /// start with an indicator (anchors, aliases, tags, block scalars, ...).
    fn scalar(&mut self, flow: bool) -> Result<(Cow<'de, str>, Style), Declined> {
        match self.at(0) {
            b'"' => {
                let body = &self.rest()[1..];
                let len = body
                    .iter()
                    .position(|b| matches!(b, b'"' | b'\\' | b'\n'))
                    .ok_or(Declined)?;
                if body[len] != b'"' {
                    return Err(Declined);
                }
                let text = &self.src[self.pos + 1..self.pos + 1 + len];
                self.pos += len + 2;
                Ok((Cow::Borrowed(text), Style::Quoted))
            }
            b'\'' => {
                self.pos += 1;
                let start = self.pos;
                loop {
                    match self.at(0) {
                        // An escaped quote: the text is no longer a slice of the input.
                        b'\'' if self.at(1) == b'\'' => {
                            let text = self.src[start..self.pos].to_owned();
                            return self.single_quoted_escaped(text);
                        }
                        b'\'' => break,
                        b'\n' | 0 => return Err(Declined),
                        _ => self.pos += 1,
                    }
                }
                let text = &self.src[start..self.pos];
                self.pos += 1;
                Ok((Cow::Borrowed(text), Style::Quoted))
            }
            b'-' | b'?' | b':' | b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!'
            | b'|' | b'>' | b'%' | b'@' | b'`' => Err(Declined),
            _ => {
                let start = self.pos;
                let mut end = start;
                loop {
                    match self.at(0) {
                        b'\n' | 0 => break,
                        b':' if matches!(self.at(1), b' ' | b'\n' | 0) => break,
                        b':' if flow
                            && matches!(self.at(1), b',' | b'?' | b'[' | b']' | b'{' | b'}') =>
                        {
                            return Err(Declined)
                        }
                        b',' | b'[' | b']' | b'{' | b'}' if flow => break,
                        b' ' => {
                            if self.at(1) == b'#' {
                                break;
                            }
                        }
                        _ => end = self.pos + 1,
                    }
                    self.pos += 1;
                }
                self.pos = end;
                Ok((Cow::Borrowed(&self.src[start..end]), Style::Plain))
            }
        }
    }

    /// The rest of a single-quoted scalar after its first `''` (cursor on it), into `text`.
    fn single_quoted_escaped(
        &mut self,
        mut text: String,
    ) -> Result<(Cow<'de, str>, Style), Declined> {
        loop {
            match self.at(0) {
                b'\'' if self.at(1) == b'\'' => {
                    text.push('\'');
                    self.pos += 2;
                }
                b'\'' => {
                    self.pos += 1;
                    return Ok((Cow::Owned(text), Style::Quoted));
                }
                b'\n' | 0 => return Err(Declined),
                b => {
                    text.push(char::from(b));
                    self.pos += 1;
                }
            }
        }
    }
}

/// One value, as the full loader presents it to serde.
struct Value<'r, 'de> {
    r: &'r mut Reader<'de>,
    kind: Kind<'de>,
}

/// A plain scalar the full loader reads as null.
fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// The full loader's booleans.
fn boolean(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// A plain decimal integer without sign or leading zero (other spellings — `0x..`, `+1`,
/// `007` — are left to the full loader).
fn unsigned(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

impl<'de> Value<'_, 'de> {
    fn plain(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar(text, Style::Plain) => Some(text),
            _ => None,
        }
    }

    fn visit_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        let Value { r, kind } = self;
        let (value, done) = match kind {
            Kind::BlockMap(col) => {
                let mut access = BlockMap {
                    r,
                    col,
                    first: true,
                    done: false,
                };
                (visitor.visit_map(&mut access)?, access.done)
            }
            Kind::FlowMap => {
                let mut access = Flow {
                    r,
                    first: true,
                    done: false,
                };
                (visitor.visit_map(&mut access)?, access.done)
            }
            Kind::Scalar(text, Style::Plain) if text.is_empty() => {
                (visitor.visit_map(Empty)?, true)
            }
            _ => return Err(Declined),
        };
        // A visitor that stopped early would leave the rest unread.
        done.then_some(value).ok_or(Declined)
    }

    fn visit_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        let Value { r, kind } = self;
        let (value, done) = match kind {
            Kind::BlockSeq(col) => {
                let mut access = BlockSeq {
                    r,
                    col,
                    first: true,
                    done: false,
                };
                (visitor.visit_seq(&mut access)?, access.done)
            }
            Kind::FlowSeq => {
                let mut access = Flow {
                    r,
                    first: true,
                    done: false,
                };
                (visitor.visit_seq(&mut access)?, access.done)
            }
            Kind::Scalar(text, Style::Plain) if text.is_empty() => {
                (visitor.visit_seq(Empty)?, true)
            }
            _ => return Err(Declined),
        };
        done.then_some(value).ok_or(Declined)
    }
}

macro_rules! decline {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, $(_: $arg,)* _visitor: V) -> Result<V::Value, Declined> {
            Err(Declined)
        })*
    };
}

impl<'de> serde::Deserializer<'de> for Value<'_, 'de> {
    type Error = Declined;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match &self.kind {
            Kind::BlockMap(_) | Kind::FlowMap => self.visit_map(visitor),
            Kind::BlockSeq(_) | Kind::FlowSeq => self.visit_seq(visitor),
            Kind::Scalar(text, Style::Plain) if is_null(text) => visitor.visit_unit(),
            Kind::Scalar(..) => Err(Declined),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.plain().and_then(boolean) {
            Some(b) => visitor.visit_bool(b),
            None => Err(Declined),
        }
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.plain().and_then(unsigned) {
            Some(n) => visitor.visit_u64(n),
            None => Err(Declined),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.kind {
            Kind::Scalar(Cow::Borrowed(text), _) => visitor.visit_borrowed_str(text),
            Kind::Scalar(Cow::Owned(text), _) => visitor.visit_string(text),
            _ => Err(Declined),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        match self.plain() {
            Some(text) if is_null(text) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Declined> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.visit_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Declined> {
        self.visit_map(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Declined> {
        self.visit_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Declined> {
        // A scalar names a unit variant; the full loader reads variants with data only from
        // tags, which this reader declines.
        match self.kind {
            Kind::Scalar(Cow::Borrowed(text), _) => visitor.visit_enum(
                serde::de::value::BorrowedStrDeserializer::<Declined>::new(text),
            ),
            Kind::Scalar(Cow::Owned(text), _) => {
                visitor.visit_enum(serde::de::value::StringDeserializer::<Declined>::new(text))
            }
            _ => Err(Declined),
        }
    }

    decline! {
        deserialize_i8(), deserialize_i16(), deserialize_i32(), deserialize_i64(),
        deserialize_i128(), deserialize_u128(), deserialize_f32(), deserialize_f64(),
        deserialize_char(), deserialize_bytes(), deserialize_byte_buf(), deserialize_unit(),
        deserialize_unit_struct(&'static str), deserialize_tuple(usize),
        deserialize_tuple_struct(&'static str, usize), deserialize_ignored_any(),
    }
}

/// A block mapping whose keys sit at column `col`.
struct BlockMap<'r, 'de> {
    r: &'r mut Reader<'de>,
    col: usize,
    first: bool,
    done: bool,
}

impl<'de> MapAccess<'de> for &mut BlockMap<'_, 'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Declined> {
        if self.done {
            return Ok(None);
        }
        if !std::mem::take(&mut self.first) {
            match self.r.peek_line()? {
                Some(col) if col == self.col && !self.r.is_entry() => {}
                // A line further in continues the previous value: a multi-line scalar, or
                // an error. A sequence entry here is an error.
                Some(col) if col >= self.col => return Err(Declined),
                _ => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
        let (text, style) = self.r.key(false)?;
        seed.deserialize(Value {
            r: &mut *self.r,
            kind: Kind::Scalar(text, style),
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        let kind = self.r.block_value(self.col, false)?;
        seed.deserialize(Value {
            r: &mut *self.r,
            kind,
        })
    }
}

/// A block sequence whose dashes sit at column `col`.
struct BlockSeq<'r, 'de> {
    r: &'r mut Reader<'de>,
    col: usize,
    first: bool,
    done: bool,
}

impl<'de> SeqAccess<'de> for &mut BlockSeq<'_, 'de> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Declined> {
        if self.done {
            return Ok(None);
        }
        if !std::mem::take(&mut self.first) {
            match self.r.peek_line()? {
                Some(col) if col == self.col && self.r.is_entry() => {}
                Some(col) if col > self.col => return Err(Declined),
                // Less indented, or a key of the mapping this sequence is the value of.
                _ => {
                    self.done = true;
                    return Ok(None);
                }
            }
        }
        self.r.pos += 1;
        let kind = self.r.block_value(self.col, true)?;
        seed.deserialize(Value {
            r: &mut *self.r,
            kind,
        })
        .map(Some)
    }
}

/// A flow sequence or mapping on one line, the cursor after its opening bracket or last
/// entry.
struct Flow<'r, 'de> {
    r: &'r mut Reader<'de>,
    first: bool,
    done: bool,
}

impl Flow<'_, '_> {
    /// Moves to the next entry; false (past the bracket) at the closing `close`.
    fn advance(&mut self, close: u8) -> Result<bool, Declined> {
        if self.done {
            return Ok(false);
        }
        self.r.skip_spaces();
        let first = std::mem::take(&mut self.first);
        match self.r.at(0) {
            b if b == close => {
                self.done = true;
                self.r.close_flow()?;
                Ok(false)
            }
            b',' if !first => {
                self.r.pos += 1;
                self.r.skip_spaces();
                // `[a, ]`, `[a,,b]` and line breaks inside are left to the full loader.
                match self.r.at(0) {
                    b',' | b']' | b'}' | b'\n' | 0 => Err(Declined),
                    _ => Ok(true),
                }
            }
            b',' | b'\n' | 0 => Err(Declined),
            _ if first => Ok(true),
            _ => Err(Declined),
        }
    }
}

impl<'de> SeqAccess<'de> for &mut Flow<'_, 'de> {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Declined> {
        if !self.advance(b']')? {
            return Ok(None);
        }
        let kind = self.r.flow_value()?;
        seed.deserialize(Value {
            r: &mut *self.r,
            kind,
        })
        .map(Some)
    }
}

impl<'de> MapAccess<'de> for &mut Flow<'_, 'de> {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Declined> {
        if !self.advance(b'}')? {
            return Ok(None);
        }
        let (text, style) = self.r.key(true)?;
        seed.deserialize(Value {
            r: &mut *self.r,
            kind: Kind::Scalar(text, style),
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Declined> {
        self.r.skip_spaces();
        // `{a: }` (an empty value) is left to the full loader.
        if matches!(self.r.at(0), b',' | b'}' | b']' | b'\n' | 0) {
            return Err(Declined);
        }
        let kind = self.r.flow_value()?;
        seed.deserialize(Value {
            r: &mut *self.r,
            kind,
        })
    }
}

/// The entries of an empty plain scalar read as a collection: none.
struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = Declined;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        _seed: T,
    ) -> Result<Option<T::Value>, Declined> {
        Ok(None)
    }
}

impl<'de> MapAccess<'de> for Empty {
    type Error = Declined;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        _seed: K,
    ) -> Result<Option<K::Value>, Declined> {
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _seed: V) -> Result<V::Value, Declined> {
        Err(Declined)
    }
}
