//! `signature` and `diff --signature`: a delta made where OLD is not.
//!
//! ```text
//!  signature:  OLD reader thread ──(chunks, digest OLD)──> hasher (this thread) ──> signature writer
//!  diff:       NEW reader thread ──(chunks, digest NEW)──> compare thread <── signature reader
//!                                                              └──(extents)──> encoder pool ──> writer
//! ```
//! Without OLD's bytes, records cannot be compressed against them: they
//! are plain zstd (or raw). The delta's OLD digest, size and base samples
//! come from the signature, so `apply` checks it like any other delta.

use std::collections::BinaryHeap;
use std::io::{Read, Write};

use super::create::{
    sample_key, write_delta, Compared, ExtentBuilder, ExtentSink, Sampler, SAMPLE_TARGET,
};
use super::{DeltaError, DiffOptions, DiffSummary};
use crate::digest::{is_zero, Digest};
use crate::format::delta::{Header, Sample};
use crate::format::signature::{
    self, block_hash, BlockHash, SignatureError, SignatureReader, SignatureWriter,
};
use crate::io::reader::ReaderOptions;
use crate::io::{ChunkReader, Input};
use crate::units::BlockSize;

/// What `signature` did.
#[derive(Debug, Clone)]
pub struct SignatureSummary {
    /// The image's size.
    pub image_size: u64,
    /// Its digest.
    pub image_digest: Digest,
    /// Block size.
    pub block_size: u32,
    /// Hashes written.
    pub blocks: u64,
    /// Signature bytes.
    pub signature_bytes: u64,
}

/// Validated options of `signature`.
#[derive(Debug, Clone, Default)]
pub struct SignatureOptions {
    /// Block size of the hashes.
    pub block_size: BlockSize,
    /// The image's size when the caller knows it and the image (a pipe)
    /// cannot tell: it goes into the header and is checked at the end.
    pub image_size: Option<u64>,
    /// Seed of the block hashes; random when `None` (tests pin it).
    pub seed: Option<u64>,
    /// Added to as the image is read.
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// Writes the signature of `image` to `out`.
///
/// # Errors
/// I/O errors reading the image; [`DeltaError::Signature`] writing.
pub fn create_signature<W: Write>(
    image: Input,
    out: W,
    options: &SignatureOptions,
) -> Result<(W, SignatureSummary), DeltaError> {
    let block_size = options.block_size;
    let header = signature::Header {
        block_size: block_size.get(),
        image_size: image.size().or(options.image_size),
        seed: options.seed.unwrap_or_else(signature::random_seed),
    };
    let out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut writer = SignatureWriter::new(out, header)?;
    let mut reader = ChunkReader::spawn(
        image,
        ReaderOptions {
            digest: true,
            progress: options.progress.clone(),
            ..ReaderOptions::default()
        },
    );
    let block = block_size.as_usize();
    let zeros = vec![0u8; block];
    let zero = block_hash(&zeros, block, header.seed);
    let mut sampler = Sampler::new();
    let mut index = 0u64;
    while let Some(chunk) = reader.next_chunk() {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                reader.abandon();
                return Err(e.into());
            }
        };
        let mut at = 0;
        while at < chunk.len {
            let end = (at + block).min(chunk.len);
            let data = if chunk.hole {
                &zeros[..end - at]
            } else {
                &chunk.data()[at..end]
            };
            let short = if chunk.hole {
                zero
            } else {
                block_hash(data, block, header.seed)
            };
            if end - at == block {
                // Hashes the block (BLAKE3) only when it is one of the
                // samples kept so far.
                sampler.offer(index, data);
            }
            if let Err(e) = writer.push(&short) {
                reader.abandon();
                return Err(e.into());
            }
            index += 1;
            at = end;
        }
        reader.recycle(chunk);
    }
    let summary = reader.finish()?;
    let digest = summary
        .digest
        .ok_or(DeltaError::Panic("signature reader"))?;
    let (out, bytes) = writer.finish(summary.bytes, digest, sampler.into_samples())?;
    let out = out
        .into_inner()
        .map_err(|e| DeltaError::Write(e.into_error()))?;
    Ok((
        out,
        SignatureSummary {
            image_size: summary.bytes,
            image_digest: digest,
            block_size: block_size.get(),
            blocks: index,
            signature_bytes: bytes,
        },
    ))
}

/// Keeps the [`SAMPLE_TARGET`] blocks of smallest [`sample_key`] among all
/// blocks, with whether NEW changed them: the signature's samples were
/// chosen by the same keys among OLD's whole blocks, so at the end it tells
/// which of them the delta leaves unchanged.
#[derive(Debug, Default)]
struct SampleWatch {
    heap: BinaryHeap<(u64, u64, bool)>,
}

impl SampleWatch {
    fn offer(&mut self, block: u64, changed: bool) {
        let key = sample_key(block);
        if self.heap.len() >= SAMPLE_TARGET && self.heap.peek().is_some_and(|top| key >= top.0) {
            return;
        }
        self.heap.push((key, block, changed));
        if self.heap.len() > SAMPLE_TARGET {
            self.heap.pop();
        }
    }

    fn unchanged(self, samples: &[Sample]) -> Vec<Sample> {
        let kept: Vec<(u64, bool)> = self.heap.into_iter().map(|(_, b, c)| (b, c)).collect();
        samples
            .iter()
            .filter(|s| kept.iter().any(|&(b, changed)| b == s.block && !changed))
            .copied()
            .collect()
    }
}

/// Writes the delta of `new` against the image `signature` describes.
///
/// # Errors
/// [`DeltaError::Signature`] for a damaged, truncated or mismatched
/// signature (a block size other than `options.block_size` when that was
/// given); I/O errors.
pub fn create_delta_from_signature<W: Write + Send>(
    signature: Box<dyn Read + Send>,
    new: Input,
    out: W,
    block_size: Option<BlockSize>,
    options: &DiffOptions,
) -> Result<(W, DiffSummary), DeltaError> {
    let reader = SignatureReader::new(std::io::BufReader::with_capacity(1 << 20, signature))?;
    let sig_header = *reader.header();
    if let Some(bs) = block_size {
        if bs.get() != sig_header.block_size {
            return Err(DeltaError::SignatureBlockSize {
                signature: sig_header.block_size,
                asked: bs.get(),
            });
        }
    }
    let header = Header {
        version: options.format.native_version(),
        block_size: sig_header.block_size,
        old_size: sig_header.image_size,
        new_size: new.size(),
        change_tracked: false,
        copies: false,
    };
    let new_reader = ChunkReader::spawn(
        new,
        ReaderOptions {
            progress: options.progress.clone(),
            ..ReaderOptions::default()
        },
    );
    let block = sig_header.block_size as usize;
    let seed = sig_header.seed;
    write_delta(header, out, options, move |sink| {
        compare_with_signature(reader, new_reader, block, seed, sink)
    })
}

fn compare_with_signature<R: Read>(
    mut sig: SignatureReader<R>,
    mut new: ChunkReader,
    block: usize,
    seed: u64,
    mut sink: ExtentSink,
) -> Result<Option<Compared>, DeltaError> {
    let mut builder = ExtentBuilder::default();
    let mut watch = SampleWatch::default();
    let zero = block_hash(&vec![0u8; block], block, seed);
    let mut sig_done = false;
    let mut index = 0u64;
    let stopped = loop {
        let chunk = match new.next_chunk() {
            None => break false,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                new.abandon();
                return Err(e.into());
            }
        };
        let mut at = 0;
        let mut stop = false;
        while at < chunk.len && !stop {
            let end = (at + block).min(chunk.len);
            let old: Option<BlockHash> = if sig_done {
                None
            } else {
                match sig.next_hash() {
                    Ok(Some(h)) => Some(h),
                    Ok(None) => {
                        sig_done = true;
                        None
                    }
                    Err(e) => {
                        new.abandon();
                        return Err(e.into());
                    }
                }
            };
            let offset = chunk.offset + at as u64;
            let zeros = chunk.hole || is_zero(&chunk.data()[at..end]);
            // Past OLD's end the applier holds zeros.
            let old = old.unwrap_or(zero);
            let unchanged = if zeros {
                old == zero
            } else {
                block_hash(&chunk.data()[at..end], block, seed) == old
            };
            watch.offer(index, !unchanged);
            let built = if unchanged {
                builder.flush()
            } else if zeros {
                builder.push_zeros(offset, (end - at) as u64)
            } else {
                builder.push_data(offset, &chunk.data()[at..end])
            };
            stop = !sink.send(built);
            index += 1;
            at = end;
        }
        new.recycle(chunk);
        if stop {
            break true;
        }
    };
    if stopped || !sink.send(builder.flush()) {
        new.abandon();
        return Ok(None);
    }
    drop(sink);
    // OLD may be longer than NEW: read the rest of the signature, so its
    // trailer vouches for every hash used.
    while !sig_done {
        match sig.next_hash() {
            Ok(Some(_)) => {}
            Ok(None) => sig_done = true,
            Err(e) => {
                new.abandon();
                return Err(e.into());
            }
        }
    }
    let new_summary = new.finish()?;
    let trailer = sig.trailer().cloned().ok_or(SignatureError::Truncated {
        offset: 0,
        context: "trailer",
    })?;
    Ok(Some(Compared {
        old_size: trailer.image_size,
        new_size: new_summary.bytes,
        old_digest: Some(trailer.image_digest),
        new_digest: new_summary.digest.unwrap_or_default(),
        samples: watch.unchanged(&trailer.samples),
        bytes_read: new_summary.bytes,
        moves: None,
    }))
}
