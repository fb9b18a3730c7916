//! A bounds-checked little-endian cursor over a byte slice, shared by the GGUF and pickle parsers.
//! Every read either returns the bytes it asked for or a [`Short`] that says how many were needed.

/// A read past the end of the buffer: `need` bytes were wanted at offset `at`, `have` remained.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Short {
    pub at: usize,
    pub need: u64,
    pub have: u64,
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes `n` bytes (a u64 so that a length field from a file cannot wrap on conversion).
    pub fn take(&mut self, n: u64) -> Result<&'a [u8], Short> {
        let have = self.remaining() as u64;
        if n > have {
            return Err(Short { at: self.pos, need: n, have });
        }
        let n = n as usize; // n <= remaining, so it fits
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Short> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, Short> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Short> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, Short> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, Short> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i8(&mut self) -> Result<i8, Short> {
        Ok(i8::from_le_bytes(self.array()?))
    }
    pub fn i16(&mut self) -> Result<i16, Short> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, Short> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, Short> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn f32(&mut self) -> Result<f32, Short> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    pub fn f64(&mut self) -> Result<f64, Short> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// Reads up to and excluding the next `\n`, consuming the newline.
    pub fn line(&mut self) -> Result<&'a [u8], Short> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(Short { at: self.pos, need: rest.len() as u64 + 1, have: rest.len() as u64 }),
        }
    }
}
