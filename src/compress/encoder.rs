//! Streaming encoders on the `brotli`, `flate2` and `zstd` crates. Each chunk in gives what
//! the encoder has ready; `finish` ends the stream properly (brotli's last meta-block, gzip's
//! CRC trailer, zstd's frame end), so strict decoders accept the output.

use std::io::{Read, Write};

use bytes::Bytes;

use super::{Algorithm, Levels};

/// An encoder for one response body.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    pub fn new(alg: Algorithm, levels: &Levels) -> std::io::Result<Encoder> {
        Ok(match alg {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(levels.gzip),
            )),
            // 22-bit window (4 MiB), brotli's default.
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 << 10,
                levels.br,
                22,
            ))),
            Algorithm::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), levels.zstd)?)
            }
        })
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Feeds `input`; returns the compressed bytes ready so far (may be empty).
    pub fn encode(&mut self, input: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.write_all(input)?,
            Encoder::Brotli(e) => e.write_all(input)?,
            Encoder::Zstd(e) => e.write_all(input)?,
        }
        Ok(Bytes::from(std::mem::take(self.output())))
    }

    /// Emits everything fed so far in a form the client can decode now (gzip's sync flush,
    /// a brotli flush meta-block, the end of a zstd block); the stream goes on after it.
    pub fn flush(&mut self) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Brotli(e) => e.flush()?,
            Encoder::Zstd(e) => e.flush()?,
        }
        Ok(Bytes::from(std::mem::take(self.output())))
    }

    /// Ends the stream; returns the remaining bytes.
    pub fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(mut e) => {
                e.flush()?;
                e.into_inner()
            }
            Encoder::Zstd(e) => e.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

/// Decodes strictly: a truncated or unterminated stream is an error (used by tests and to
/// check what the encoders produce).
pub fn decode_strict(alg: Algorithm, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match alg {
        Algorithm::Gzip => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        Algorithm::Zstd => {
            out = zstd::stream::decode_all(data).map_err(|e| e.to_string())?;
        }
        Algorithm::Brotli => {
            let mut state = brotli::BrotliState::new(
                brotli::enc::StandardAlloc::default(),
                brotli::enc::StandardAlloc::default(),
                brotli::enc::StandardAlloc::default(),
            );
            let mut buf = vec![0u8; 1 << 20];
            let (mut avail_in, mut in_off) = (data.len(), 0usize);
            let mut total = 0usize;
            loop {
                let (mut avail_out, mut out_off) = (buf.len(), 0usize);
                let result = brotli::BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_off,
                    data,
                    &mut avail_out,
                    &mut out_off,
                    &mut buf,
                    &mut total,
                    &mut state,
                );
                out.extend_from_slice(&buf[..out_off]);
                match result {
                    brotli::BrotliResult::ResultSuccess => break,
                    brotli::BrotliResult::NeedsMoreOutput => continue,
                    brotli::BrotliResult::NeedsMoreInput => {
                        return Err("unterminated brotli stream".into())
                    }
                    brotli::BrotliResult::ResultFailure => {
                        return Err("invalid brotli stream".into())
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A compressible HTML page of `len` bytes, for tests and benchmarks.
pub fn sample_html(len: usize) -> Vec<u8> {
    let mut page = b"<!doctype html><html><head><title>Assessment</title></head><body>".to_vec();
    let mut i = 0;
    while page.len() < len {
        page.extend_from_slice(
            format!("<div class=\"question\" id=\"q{i}\"><p>Question {i}: choose the best answer.</p><ul><li>A</li><li>B</li></ul></div>\n").as_bytes(),
        );
        i += 1;
    }
    page.truncate(len);
    page
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn round_trip(alg: Algorithm, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut enc = Encoder::new(alg, &Levels::default()).unwrap();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            out.extend_from_slice(&enc.encode(piece).unwrap());
        }
        out.extend_from_slice(&enc.finish().unwrap());
        out
    }

    #[test]
    fn every_algorithm_round_trips_and_terminates() {
        let page = sample_html(100 << 10);
        for alg in [Algorithm::Gzip, Algorithm::Brotli, Algorithm::Zstd] {
            for chunk in [1 << 20, 4096, 7] {
                let out = round_trip(alg, &page, chunk);
                assert_eq!(
                    decode_strict(alg, &out).unwrap(),
                    page,
                    "{alg:?} chunk {chunk}"
                );
                assert!(
                    out.len() * 10 < page.len() * 3,
                    "{alg:?} ratio {}",
                    out.len()
                );
                // Cutting the end off must be detected.
                assert!(
                    decode_strict(alg, &out[..out.len() - 4]).is_err(),
                    "{alg:?} truncation"
                );
            }
            assert_eq!(decode_strict(alg, &round_trip(alg, b"", 1)).unwrap(), b"");
        }
    }
}
