//! The IDX file format of MNIST and Fashion-MNIST (LeCun et al.), gzip'd or not.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte), a rank byte, then `rank`
//! big-endian u32 dimensions, then the data in row-major order.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use thiserror::Error;

/// What can be wrong with an IDX file.
#[derive(Debug, Error)]
pub enum IdxError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gzip stream is broken (often a partial download).
    #[error("{path} is not a valid gzip file ({source}); download it again")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header does not describe unsigned bytes of the expected rank.
    #[error(
        "{path} is not an IDX file of rank {expected_rank}: its magic number is 0x{found:08x}, expected 0x{expected:08x}"
    )]
    Magic {
        /// The file.
        path: PathBuf,
        /// The rank the caller expects (3 for images, 1 for labels).
        expected_rank: u8,
        /// The expected magic number.
        expected: u32,
        /// The magic number found.
        found: u32,
    },
    /// A header that announces more data than any image data set holds (a damaged file).
    #[error(
        "{path}: its header announces {dims:?} ({bytes} bytes), more than the {max} bytes pdecay reads from one IDX file; the file is damaged, download it again"
    )]
    Implausible {
        /// The file.
        path: PathBuf,
        /// The dimensions the header announces.
        dims: Vec<usize>,
        /// Their product, saturated.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// More bytes than the header announces.
    #[error(
        "{path} holds more data than its header announces ({expected} bytes); the file is damaged or not what it seems, download it again"
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Bytes announced.
        expected: usize,
    },
    /// Fewer bytes than the header announces.
    #[error(
        "{path} is truncated: its header announces {expected} bytes of data, the file holds {found}; download it again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes announced.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
}

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// The largest data one IDX file may announce: 2 GiB, beyond any (Fashion-, E-)MNIST file.
pub const MAX_IDX_BYTES: usize = 1 << 31;

/// Reads an IDX file of unsigned bytes with `rank` dimensions; gzip is detected by its magic
/// bytes, not by the file name. The file is streamed: memory holds the announced data only,
/// however the file lies.
pub fn read_idx(path: &Path, rank: u8) -> Result<IdxArray, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let gzipped = std::io::BufRead::fill_buf(&mut file)
        .map_err(io)?
        .starts_with(&[0x1f, 0x8b]);
    if gzipped {
        decode_from(GzDecoder::new(file), true, rank, path)
    } else {
        decode_from(file, false, rank, path)
    }
}

/// Decodes the bytes of an IDX file (gzip'd or not); `path` names it in errors.
pub fn decode_idx(raw: &[u8], rank: u8, path: &Path) -> Result<IdxArray, IdxError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        decode_from(GzDecoder::new(raw), true, rank, path)
    } else {
        decode_from(raw, false, rank, path)
    }
}

/// Reads into `buf` until it is full or the stream ends; the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Decodes an IDX stream: the header, exactly the data it announces (checked against
/// [`MAX_IDX_BYTES`] first), and nothing after it.
fn decode_from(
    mut reader: impl Read,
    gzipped: bool,
    rank: u8,
    path: &Path,
) -> Result<IdxArray, IdxError> {
    let broken = |source| {
        if gzipped {
            IdxError::Gzip {
                path: path.to_path_buf(),
                source,
            }
        } else {
            IdxError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let expected_magic = 0x0000_0800 | u32::from(rank);
    let header_len = 4 + 4 * rank as usize;
    let mut header = vec![0u8; header_len];
    let got = fill(&mut reader, &mut header).map_err(broken)?;
    let truncated = |found| IdxError::Truncated {
        path: path.to_path_buf(),
        expected: header_len,
        found,
    };
    if got < 4 {
        return Err(truncated(got));
    }
    let magic = u32::from_be_bytes(header[..4].try_into().unwrap());
    if magic != expected_magic {
        return Err(IdxError::Magic {
            path: path.to_path_buf(),
            expected_rank: rank,
            expected: expected_magic,
            found: magic,
        });
    }
    if got < header_len {
        return Err(truncated(got));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .unwrap_or(usize::MAX);
    if expected > MAX_IDX_BYTES {
        return Err(IdxError::Implausible {
            path: path.to_path_buf(),
            dims,
            bytes: expected,
            max: MAX_IDX_BYTES,
        });
    }
    // grows as the data arrives: a header that lies costs only the bytes really there
    let mut data = Vec::new();
    (&mut reader)
        .take(expected as u64)
        .read_to_end(&mut data)
        .map_err(broken)?;
    if data.len() < expected {
        return Err(IdxError::Truncated {
            path: path.to_path_buf(),
            expected,
            found: data.len(),
        });
    }
    if fill(&mut reader, &mut [0u8; 1]).map_err(broken)? > 0 {
        return Err(IdxError::TrailingData {
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(IdxArray { dims, data })
}

/// Encodes an IDX file of unsigned bytes (for tests and tools).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend((*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn reads_a_hand_made_file_plain_and_gzipped() {
        // 2 images of 2x3 pixels
        let raw = [
            0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let p = Path::new("x");
        let plain = decode_idx(&raw, 3, p).unwrap();
        assert_eq!(plain.dims, vec![2, 2, 3]);
        assert_eq!(plain.data, (1..=12).collect::<Vec<u8>>());
        assert_eq!(decode_idx(&gzip(&raw), 3, p).unwrap(), plain);
        assert_eq!(encode_idx(&[2, 2, 3], &plain.data), raw.to_vec());
    }

    #[test]
    fn wrong_magic_truncation_and_broken_gzip_are_clear_errors() {
        let p = Path::new("labels.idx");
        let labels = encode_idx(&[3], &[1, 2, 3]);
        let err = decode_idx(&labels, 3, p).unwrap_err().to_string();
        assert!(
            err.contains("magic number is 0x00000801, expected 0x00000803"),
            "{err}"
        );
        let err = decode_idx(&labels[..6], 1, p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = decode_idx(&labels[..9], 1, p).unwrap_err().to_string();
        assert!(
            err.contains("announces 3 bytes of data, the file holds 1"),
            "{err}"
        );
        let mut gz = gzip(&labels);
        gz.truncate(gz.len() / 2);
        let err = decode_idx(&gz, 1, p).unwrap_err().to_string();
        assert!(err.contains("not a valid gzip file"), "{err}");
        let err = read_idx(Path::new("/nonexistent/idx"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read /nonexistent/idx"), "{err}");
    }

    #[test]
    fn a_lying_header_is_refused_before_reading_and_trailing_data_after() {
        let p = Path::new("images.gz");
        // 268M images of 28x28 announced by a tiny file: refused from the header alone
        let mut header = vec![0u8, 0, 8, 3];
        for d in [268_000_000u32, 28, 28] {
            header.extend(d.to_be_bytes());
        }
        for bytes in [header.clone(), gzip(&header)] {
            let err = decode_idx(&bytes, 3, p).unwrap_err().to_string();
            assert!(err.contains("more than the 2147483648 bytes"), "{err}");
        }
        // valid data followed by more (zeros, as a decompression bomb would add)
        let mut labels = encode_idx(&[3], &[1, 2, 3]);
        labels.extend([0u8; 4096]);
        for bytes in [labels.clone(), gzip(&labels)] {
            let err = decode_idx(&bytes, 1, p).unwrap_err().to_string();
            assert!(err.contains("more data than its header announces"), "{err}");
        }
        // read from a file, streamed, the same
        let file = std::env::temp_dir().join(format!("pdecay-idx-{}.gz", std::process::id()));
        std::fs::write(&file, gzip(&labels)).unwrap();
        let err = read_idx(&file, 1).unwrap_err().to_string();
        assert!(err.contains("more data than its header announces"), "{err}");
        std::fs::write(&file, gzip(&encode_idx(&[3], &[1, 2, 3]))).unwrap();
        assert_eq!(read_idx(&file, 1).unwrap().data, [1, 2, 3]);
        std::fs::remove_file(&file).unwrap();
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), rank in 1u8..4) {
            let _ = decode_idx(&bytes, rank, Path::new("fuzz"));
        }

        #[test]
        fn round_trip(dims in prop::collection::vec(1usize..5, 1..4), seed in any::<u8>()) {
            let n: usize = dims.iter().product();
            let data: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let decoded = decode_idx(&encode_idx(&dims, &data), dims.len() as u8, Path::new("r")).unwrap();
            prop_assert_eq!(decoded.dims, dims);
            prop_assert_eq!(decoded.data, data);
        }
    }
}
