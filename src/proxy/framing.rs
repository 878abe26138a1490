//! HTTP/1.1 message bodies: length-delimited, chunked, or until the
//! connection closes. One decoder serves both the request bodies the
//! gateway reads from clients and the answers it reads from upstreams.
//!
//! The decoder is strict where leniency has let two parties disagree on
//! where a message ends (request smuggling): chunk sizes are bare hex
//! digits, every chunk ends in CRLF, and lines have a length limit.

use bytes::{Bytes, BytesMut};

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one, with the
    /// bytes of trailers seen so far.
    Trailers(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Bytes still to come; `Length(0)` is a finished body.
    Length(u64),
    Chunked(ChunkState),
    /// Everything until the peer closes (HTTP/1.0-style answers, tunnels).
    UntilClose,
}

impl Framing {
    pub const DONE: Framing = Framing::Length(0);

    pub fn is_done(&self) -> bool {
        *self == Framing::DONE
    }
}

/// What the buffer gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// More bytes must be read first.
    NeedMore,
    /// The body is complete.
    End,
}

pub fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned())
}

/// Takes the next piece of body out of `buf`, advancing `framing`.
pub fn decode(buf: &mut BytesMut, framing: &mut Framing) -> std::io::Result<Step> {
    loop {
        match *framing {
            Framing::Length(0) => return Ok(Step::End),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (buf.len() as u64).min(left) as usize;
                *framing = Framing::Length(left - n as u64);
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let all = buf.len();
                return Ok(Step::Data(buf.split_to(all).freeze()));
            }
            Framing::Chunked(ChunkState::Data(0)) => {
                *framing = Framing::Chunked(ChunkState::DataEnd);
            }
            Framing::Chunked(ChunkState::Data(left)) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (buf.len() as u64).min(left) as usize;
                *framing = Framing::Chunked(ChunkState::Data(left - n as u64));
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Framing::Chunked(state) => {
                // Line-based states wait for a whole line.
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_LINE {
                        return Err(invalid("chunk line too long"));
                    }
                    return Ok(Step::NeedMore);
                };
                if end > MAX_LINE {
                    return Err(invalid("chunk line too long"));
                }
                let line = buf.split_to(end + 2);
                let line = &line[..end];
                *framing = match state {
                    ChunkState::Size => match chunk_size(line)? {
                        0 => Framing::Chunked(ChunkState::Trailers(0)),
                        size => Framing::Chunked(ChunkState::Data(size)),
                    },
                    ChunkState::DataEnd => {
                        if !line.is_empty() {
                            return Err(invalid("missing CRLF after a chunk"));
                        }
                        Framing::Chunked(ChunkState::Size)
                    }
                    ChunkState::Trailers(seen) => {
                        if line.is_empty() {
                            *framing = Framing::DONE;
                            return Ok(Step::End);
                        }
                        let seen = seen + line.len() + 2;
                        if seen > MAX_TRAILERS {
                            return Err(invalid("trailers too large"));
                        }
                        Framing::Chunked(ChunkState::Trailers(seen))
                    }
                    // Handled by the arms above.
                    ChunkState::Data(_) => Framing::Chunked(state),
                };
            }
        }
    }
}

/// `1*HEXDIG [ ";" extensions ]`: no sign, no spaces before the digits,
/// at most 16 digits.
fn chunk_size(line: &[u8]) -> std::io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(invalid("bad chunk size"));
    }
    let rest = &line[digits..];
    let ext_ok = rest.is_empty() || {
        let trimmed = rest.trim_ascii_start();
        trimmed.first() == Some(&b';')
    };
    if !ext_ok {
        return Err(invalid("bad chunk size"));
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| invalid("bad chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| invalid("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], mut framing: Framing) -> std::io::Result<(Vec<u8>, bool)> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decode(&mut buf, &mut framing)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::NeedMore => return Ok((out, false)),
                Step::End => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_and_leave_what_follows() {
        let mut buf =
            BytesMut::from(&b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\nNEXT"[..]);
        let mut f = Framing::Chunked(ChunkState::Size);
        let mut out = Vec::new();
        while let Step::Data(d) = decode(&mut buf, &mut f).unwrap() {
            out.extend_from_slice(&d);
        }
        assert_eq!(out, b"hello world");
        assert!(f.is_done());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
        ] {
            let r = all(bad, Framing::Chunked(ChunkState::Size));
            assert!(r.is_err(), "{:?} gave {r:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn partial_input_asks_for_more() {
        assert_eq!(
            all(b"5\r\nhel", Framing::Chunked(ChunkState::Size)).unwrap(),
            (b"hel".to_vec(), false)
        );
        assert_eq!(
            all(b"abc", Framing::Length(5)).unwrap(),
            (b"abc".to_vec(), false)
        );
        assert_eq!(
            all(b"abcdefg", Framing::Length(5)).unwrap(),
            (b"abcde".to_vec(), true)
        );
    }
}
