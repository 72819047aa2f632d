//! A small, defensive binary codec: LEB128 integers and length-prefixed bytes.
//!
//! Every read checks bounds and limits, so decoding untrusted bytes returns
//! [`CoreError::Corrupt`] and never panics or allocates more than the input's size.

use crate::{CoreError, CoreResult};

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u64(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn corrupt(&self, what: &str) -> CoreError {
        CoreError::Corrupt(format!("{what} at byte {}", self.pos))
    }

    pub fn u8(&mut self) -> CoreResult<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.corrupt("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u64(&mut self) -> CoreResult<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.corrupt("integer overflow"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.corrupt("integer too long"))
    }

    pub fn u32(&mut self) -> CoreResult<u32> {
        u32::try_from(self.u64()?).map_err(|_| self.corrupt("u32 out of range"))
    }

    pub fn len(&mut self, max: usize) -> CoreResult<usize> {
        let n = self.u64()?;
        if n > max as u64 || n > self.remaining() as u64 {
            return Err(self.corrupt("length out of range"));
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self, max: usize) -> CoreResult<&'a [u8]> {
        let n = self.len(max)?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn string(&mut self, max: usize) -> CoreResult<String> {
        let b = self.bytes(max)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.corrupt("invalid UTF-8"))
    }

    pub fn raw(&mut self, n: usize) -> CoreResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.corrupt("truncated"));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn expect_end(&self) -> CoreResult<()> {
        if self.remaining() != 0 {
            return Err(self.corrupt("trailing bytes"));
        }
        Ok(())
    }
}
