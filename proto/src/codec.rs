//! Body encoding: a bounds-checked [`Reader`], the [`Field`] trait every body part implements,
//! and the bounded string, byte and list types bodies are built from.
//!
//! Parse, don't validate: a value that decoded is valid by construction (a [`Name`] holds only
//! allowed characters, a [`Str`] is UTF-8 within its bounds, a [`List`] within its count).
//! Nothing here panics on any input; every failure is a [`BodyError`].

use core::fmt;

/// Why a body did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// The body ended while `what` needed `need` more bytes.
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes it needed.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// Bytes were left after the last field.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A string field is not UTF-8.
    InvalidUtf8 {
        /// The field.
        what: &'static str,
    },
    /// A string, byte or list field is longer or shorter than its bounds allow.
    BadLength {
        /// The field.
        what: &'static str,
        /// Its length (bytes, or entries for a list).
        len: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A name holds a character outside `[A-Za-z0-9_.-]`.
    InvalidName,
    /// A tagged field has a tag this version does not define.
    BadTag {
        /// The field.
        what: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// The opcode has no body of the kind asked for (a push opcode read as a request, ...).
    WrongKind {
        /// The opcode's number.
        opcode: u16,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BodyError::Truncated { what, need, have } => {
                write!(
                    f,
                    "body truncated in {what}: need {need} bytes, have {have}"
                )
            }
            BodyError::TrailingBytes { count } => write!(f, "{count} bytes after the last field"),
            BodyError::InvalidUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            BodyError::BadLength {
                what,
                len,
                min,
                max,
            } => {
                write!(f, "{what} has length {len}, allowed {min}..={max}")
            }
            BodyError::InvalidName => f.write_str("name holds a character outside [A-Za-z0-9_.-]"),
            BodyError::BadTag { what, tag } => write!(f, "{what} has unknown tag {tag}"),
            BodyError::WrongKind { opcode } => {
                write!(f, "opcode 0x{opcode:04X} has no body of this kind")
            }
        }
    }
}

impl std::error::Error for BodyError {}

/// A cursor over a body that refuses to read past the end.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over the whole of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BodyError> {
        if n > self.bytes.len() {
            return Err(BodyError::Truncated {
                what,
                need: n,
                have: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BodyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was read.
    pub fn expect_empty(&self) -> Result<(), BodyError> {
        match self.bytes.len() {
            0 => Ok(()),
            count => Err(BodyError::TrailingBytes { count }),
        }
    }
}

/// Something that can be a part of a body: a fixed-width integer, a bounded string, a list, or a
/// whole body (bodies are fields too, so they nest).
pub trait Field<'a>: Sized {
    /// Reads one value.
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError>;
    /// Appends the encoding. Never allocates when `out` has `encoded_len()` spare capacity.
    fn write(&self, out: &mut Vec<u8>);
    /// The exact number of bytes `write` appends.
    fn encoded_len(&self) -> usize;

    /// Decodes a whole buffer, refusing trailing bytes.
    fn decode(bytes: &'a [u8]) -> Result<Self, BodyError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.expect_empty()?;
        Ok(v)
    }

    /// Encodes into a new vector (for tests and tools; the hot path uses `write`).
    fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write(&mut out);
        out
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl<'a> Field<'a> for $t {
            fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
                Ok(<$t>::from_be_bytes(r.array(stringify!($t))?))
            }
            fn write(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn encoded_len(&self) -> usize {
                core::mem::size_of::<$t>()
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64);

impl<'a, const N: usize> Field<'a> for [u8; N] {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        r.array("fixed bytes")
    }
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn encoded_len(&self) -> usize {
        N
    }
}

/// Reads a `u16` length prefix and checks it against `min..=max` before touching the bytes.
fn read_len(
    r: &mut Reader<'_>,
    what: &'static str,
    min: usize,
    max: usize,
) -> Result<usize, BodyError> {
    let len = usize::from(u16::read(r)?);
    if len < min || len > max {
        return Err(BodyError::BadLength {
            what,
            len,
            min,
            max,
        });
    }
    Ok(len)
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    debug_assert!(
        len <= usize::from(u16::MAX),
        "length prefix overflow: {len}"
    );
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

/// Reads a `u16` length in `min..=max`, then that many bytes.
fn read_prefixed<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
    min: usize,
    max: usize,
) -> Result<&'a [u8], BodyError> {
    let len = read_len(r, what, min, max)?;
    r.take(len, what)
}

/// Writes a `u16` length, then the bytes. Callers hold bytes their type bounds below 64 KiB.
fn write_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    write_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A UTF-8 string of `MIN..=MAX` bytes, encoded as a `u16` length then the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Str<'a, const MIN: usize, const MAX: usize>(&'a str);

impl<'a, const MIN: usize, const MAX: usize> Str<'a, MIN, MAX> {
    const BOUNDS_FIT_U16: () = assert!(MIN <= MAX && MAX <= u16::MAX as usize);

    /// The string, if its length is within bounds.
    pub fn new(s: &'a str) -> Result<Self, BodyError> {
        let () = Self::BOUNDS_FIT_U16;
        if s.len() < MIN || s.len() > MAX {
            return Err(BodyError::BadLength {
                what: "string",
                len: s.len(),
                min: MIN,
                max: MAX,
            });
        }
        Ok(Str(s))
    }

    /// The text.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl<'a, const MIN: usize, const MAX: usize> Field<'a> for Str<'a, MIN, MAX> {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        let () = Self::BOUNDS_FIT_U16;
        let bytes = read_prefixed(r, "string", MIN, MAX)?;
        let s =
            core::str::from_utf8(bytes).map_err(|_| BodyError::InvalidUtf8 { what: "string" })?;
        Ok(Str(s))
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_prefixed(out, self.0.as_bytes());
    }
    fn encoded_len(&self) -> usize {
        2 + self.0.len()
    }
}

impl<const MIN: usize, const MAX: usize> fmt::Display for Str<'_, MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Opaque bytes, `MIN..=MAX` of them, encoded as a `u16` length then the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes<'a, const MIN: usize, const MAX: usize>(&'a [u8]);

impl<'a, const MIN: usize, const MAX: usize> Bytes<'a, MIN, MAX> {
    const BOUNDS_FIT_U16: () = assert!(MIN <= MAX && MAX <= u16::MAX as usize);

    /// The bytes, if their length is within bounds.
    pub fn new(b: &'a [u8]) -> Result<Self, BodyError> {
        let () = Self::BOUNDS_FIT_U16;
        if b.len() < MIN || b.len() > MAX {
            return Err(BodyError::BadLength {
                what: "bytes",
                len: b.len(),
                min: MIN,
                max: MAX,
            });
        }
        Ok(Bytes(b))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl<'a, const MIN: usize, const MAX: usize> Field<'a> for Bytes<'a, MIN, MAX> {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        let () = Self::BOUNDS_FIT_U16;
        Ok(Bytes(read_prefixed(r, "bytes", MIN, MAX)?))
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_prefixed(out, self.0);
    }
    fn encoded_len(&self) -> usize {
        2 + self.0.len()
    }
}

/// Longest user or room name, in bytes.
pub const NAME_LEN_MAX: usize = 32;

/// A user or room name: 1 to 32 bytes of `[A-Za-z0-9_.-]`, encoded like a string. Names compare
/// byte for byte (case matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name<'a>(&'a str);

impl<'a> Name<'a> {
    /// The name, if it is 1..=32 allowed characters.
    pub fn new(s: &'a str) -> Result<Self, BodyError> {
        if s.is_empty() || s.len() > NAME_LEN_MAX {
            return Err(BodyError::BadLength {
                what: "name",
                len: s.len(),
                min: 1,
                max: NAME_LEN_MAX,
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(BodyError::InvalidName);
        }
        Ok(Name(s))
    }

    /// The name.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl<'a> Field<'a> for Name<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        let bytes = read_prefixed(r, "name", 1, NAME_LEN_MAX)?;
        // A name outside ASCII is invalid whatever its encoding, so a UTF-8 failure is one too.
        let s = core::str::from_utf8(bytes).map_err(|_| BodyError::InvalidName)?;
        Name::new(s)
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_prefixed(out, self.0.as_bytes());
    }
    fn encoded_len(&self) -> usize {
        2 + self.0.len()
    }
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Up to `MAX` entries, encoded as a `u16` count then each entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct List<T, const MAX: usize>(Vec<T>);

impl<T, const MAX: usize> List<T, MAX> {
    const BOUND_FITS_U16: () = assert!(MAX <= u16::MAX as usize);

    /// The entries, if there are at most `MAX`.
    pub fn new(items: Vec<T>) -> Result<Self, BodyError> {
        let () = Self::BOUND_FITS_U16;
        if items.len() > MAX {
            return Err(BodyError::BadLength {
                what: "list",
                len: items.len(),
                min: 0,
                max: MAX,
            });
        }
        Ok(List(items))
    }

    /// The entries.
    pub fn items(&self) -> &[T] {
        &self.0
    }

    /// The entries, owned.
    pub fn into_items(self) -> Vec<T> {
        self.0
    }
}

impl<'a, T: Field<'a>, const MAX: usize> Field<'a> for List<T, MAX> {
    fn read(r: &mut Reader<'a>) -> Result<Self, BodyError> {
        let () = Self::BOUND_FITS_U16;
        let count = read_len(r, "list", 0, MAX)?;
        // Every entry takes at least one byte, so a count larger than the bytes left is a lie
        // caught before it sizes an allocation.
        if count > r.remaining() {
            return Err(BodyError::Truncated {
                what: "list",
                need: count,
                have: r.remaining(),
            });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(T::read(r)?);
        }
        Ok(List(items))
    }
    fn write(&self, out: &mut Vec<u8>) {
        write_len(out, self.0.len());
        for item in &self.0 {
            item.write(out);
        }
    }
    fn encoded_len(&self) -> usize {
        2 + self.0.iter().map(Field::encoded_len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_to_read_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(u16::read(&mut r), Ok(0x0102));
        assert_eq!(
            u16::read(&mut r),
            Err(BodyError::Truncated {
                what: "u16",
                need: 2,
                have: 1
            })
        );
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        assert_eq!(u32::decode(&[0, 0, 0, 1]), Ok(1));
        assert_eq!(
            u32::decode(&[0, 0, 0, 1, 9]),
            Err(BodyError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn str_refuses_invalid_utf8_and_bad_lengths() {
        type S<'a> = Str<'a, 1, 4>;
        assert_eq!(S::decode(&[0, 2, b'h', b'i']).map(|s| s.as_str()), Ok("hi"));
        assert_eq!(
            S::decode(&[0, 2, 0xC3, 0x28]),
            Err(BodyError::InvalidUtf8 { what: "string" })
        );
        assert!(matches!(
            S::decode(&[0, 0]),
            Err(BodyError::BadLength { len: 0, .. })
        ));
        assert!(matches!(
            S::decode(&[0, 5, b'a', b'b', b'c', b'd', b'e']),
            Err(BodyError::BadLength { len: 5, .. })
        ));
        // The length says 4 but only 3 bytes follow.
        assert!(matches!(
            S::decode(&[0, 4, b'a', b'b', b'c']),
            Err(BodyError::Truncated {
                need: 4,
                have: 3,
                ..
            })
        ));
        assert!(S::new("").is_err());
        assert!(S::new("abcde").is_err());
    }

    #[test]
    fn names_allow_only_their_alphabet() {
        assert!(Name::new("alice_01.x-y").is_ok());
        for bad in ["", "has space", "é", "a/b", "x\0", &"a".repeat(33)] {
            assert!(Name::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Name::decode(&[0, 3, b'a', b' ', b'b']),
            Err(BodyError::InvalidName)
        );
        assert_eq!(
            Name::decode(&[0, 2, 0xC3, 0xA9]),
            Err(BodyError::InvalidName)
        );
    }

    #[test]
    fn list_refuses_lying_counts_before_allocating() {
        type L = List<u64, 1000>;
        // Claims 1000 entries in a 2-byte body.
        assert!(matches!(
            L::decode(&[0x03, 0xE8]),
            Err(BodyError::Truncated { .. })
        ));
        // Over the bound.
        assert!(matches!(
            List::<u8, 2>::decode(&[0, 3, 1, 2, 3]),
            Err(BodyError::BadLength { len: 3, .. })
        ));
        let l = L::new(vec![1, 2]).expect("within bound");
        assert_eq!(L::decode(&l.to_vec()), Ok(l));
    }
}
