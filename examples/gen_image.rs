//! Realistic disk image generator for the benchmark harness (`bench/run`).
//!
//! ```text
//! gen_image base   --size 2G [--seed 1] [--fill 0.7] -o base.img
//! gen_image mutate --input base.img [--change 0.02] [--cluster 64K] [--seed 2]
//!                  [--grow 64M] -o new.img
//! ```
//!
//! `base` lays the image out as regions of 64 KiB to 64 MiB (log-uniform
//! sizes, 64 KiB aligned) of three kinds, in roughly these byte shares:
//!
//! | kind         | share            | content                                          |
//! |--------------|------------------|--------------------------------------------------|
//! | zero         | `1 - fill` (30%) | never written: the file is sparse there          |
//! | compressible | `fill * 4/7` (40%) | log-like text records, about 3x with `zstd -3` |
//! | random       | `fill * 3/7` (30%) | incompressible bytes (media, encrypted, packed) |
//!
//! `mutate` makes a sparse copy of `--input` (holes and all-zero 4 KiB blocks
//! are not written), then rewrites whole `--cluster`-sized, cluster-aligned
//! extents at random positions until about `--change` of the 4 KiB blocks
//! have been rewritten: half with new random data, 30% with new compressible
//! data, 20% zeroed (a hole is punched, like a TRIM; an extent that is
//! already all zero gets compressible data instead, so it really changes).
//! `--grow` appends that many bytes laid out like a base image.
//!
//! Everything is a pure function of the arguments and the seed. Sizes take
//! K/M/G/T suffixes (powers of 1024). The generator streams through one
//! 1 MiB buffer, so memory stays small whatever the image size, and it uses
//! wyrand (not a cryptographic generator) so that it runs well above
//! 500 MB/s. A one-line summary goes to stderr.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

/// Granularity of change accounting and of the zero-block scan.
const BLOCK: u64 = 4096;
/// Streaming buffer size.
const BUF: usize = 1 << 20;
/// Smallest and largest region of one kind in a generated image.
const MIN_REGION: u64 = 64 << 10;
const MAX_REGION: u64 = 64 << 20;
const ZERO_BLOCK: [u8; BLOCK as usize] = [0; BLOCK as usize];

const USAGE: &str = "\
usage:
  gen_image base   --size SIZE [--seed N] [--fill F] -o OUT
  gen_image mutate --input IN [--change F] [--cluster SIZE] [--seed N] [--grow SIZE] -o OUT

  --size SIZE     image size, K/M/G/T suffixes are powers of 1024 (base)
  --fill F        non-zero fraction of the image, default 0.7 (base)
  --seed N        seed, default 1 (base) / 2 (mutate)
  --input IN      image to copy and change (mutate)
  --change F      fraction of 4 KiB blocks to rewrite, default 0.02 (mutate)
  --cluster SIZE  size and alignment of each rewritten extent, default 64K (mutate)
  --grow SIZE     bytes of new data appended after the changes, default 0 (mutate)
  -o OUT          output file (truncated and written sparse)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            eprintln!("gen_image: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Error::Io(context, err)) => {
            eprintln!("gen_image: {context}: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
enum Error {
    Usage(String),
    Io(String, io::Error),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |err| Error::Io(context, err)
}

// ---------------------------------------------------------------- arguments

#[derive(Debug)]
struct BaseArgs {
    size: u64,
    seed: u64,
    fill: f64,
    output: PathBuf,
}

#[derive(Debug)]
struct MutateArgs {
    input: PathBuf,
    change: f64,
    cluster: u64,
    seed: u64,
    grow: u64,
    output: PathBuf,
}

fn run(args: &[String]) -> Result<(), Error> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(Error::Usage("missing subcommand".into()));
    };
    if cmd == "-h" || cmd == "--help" {
        println!("{USAGE}");
        return Ok(());
    }
    let mut flags = Flags::parse(rest)?;
    match cmd.as_str() {
        "base" => {
            let a = BaseArgs {
                size: flags
                    .size("--size")?
                    .ok_or_else(|| Error::Usage("base needs --size".into()))?,
                seed: flags.int("--seed")?.unwrap_or(1),
                fill: flags.fraction("--fill")?.unwrap_or(0.7),
                output: flags.output()?,
            };
            flags.finish()?;
            base(&a)
        }
        "mutate" => {
            let a = MutateArgs {
                input: flags
                    .take("--input")
                    .map(PathBuf::from)
                    .ok_or_else(|| Error::Usage("mutate needs --input".into()))?,
                change: flags.fraction("--change")?.unwrap_or(0.02),
                cluster: flags.size("--cluster")?.unwrap_or(64 << 10),
                seed: flags.int("--seed")?.unwrap_or(2),
                grow: flags.size("--grow")?.unwrap_or(0),
                output: flags.output()?,
            };
            flags.finish()?;
            if a.cluster == 0 || a.cluster & (BLOCK - 1) != 0 {
                return Err(Error::Usage(
                    "--cluster must be a non-zero multiple of 4K".into(),
                ));
            }
            mutate(&a)
        }
        other => Err(Error::Usage(format!("unknown subcommand {other:?}"))),
    }
}

/// `--flag value` pairs, consumed one by one so leftovers can be reported.
#[derive(Debug)]
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), v.to_string()),
                _ => {
                    if !flag.starts_with('-') {
                        return Err(Error::Usage(format!("unexpected argument {flag:?}")));
                    }
                    let v = it
                        .next()
                        .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
                    (flag.clone(), v.clone())
                }
            };
            pairs.push((name, value));
        }
        Ok(Flags(pairs))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().rposition(|(n, _)| n == name)?;
        let value = self.0.remove(i).1;
        self.0.retain(|(n, _)| n != name);
        Some(value)
    }

    fn size(&mut self, name: &str) -> Result<Option<u64>, Error> {
        self.take(name)
            .map(|v| parse_size(&v).ok_or_else(|| Error::Usage(format!("{name}: bad size {v:?}"))))
            .transpose()
    }

    fn int(&mut self, name: &str) -> Result<Option<u64>, Error> {
        self.take(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Error::Usage(format!("{name}: bad number {v:?}")))
            })
            .transpose()
    }

    fn fraction(&mut self, name: &str) -> Result<Option<f64>, Error> {
        self.take(name)
            .map(|v| match v.parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
                _ => Err(Error::Usage(format!(
                    "{name}: want a fraction in [0, 1], got {v:?}"
                ))),
            })
            .transpose()
    }

    fn output(&mut self) -> Result<PathBuf, Error> {
        self.take("-o")
            .or_else(|| self.take("--output"))
            .map(PathBuf::from)
            .ok_or_else(|| Error::Usage("missing -o OUT".into()))
    }

    fn finish(self) -> Result<(), Error> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => Err(Error::Usage(format!("unknown option {name}"))),
        }
    }
}

/// `123`, `64K`, `1.5G`, `2GiB`: suffixes are powers of 1024.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_suffix("iB")
        .or_else(|| s.strip_suffix('B'))
        .unwrap_or(s);
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(1u64 << shift);
    }
    let f: f64 = num.parse().ok()?;
    (f.is_finite() && f >= 0.0).then(|| (f * (1u64 << shift) as f64).round() as u64)
}

// ------------------------------------------------------------------ content

/// wyrand: one multiply per 64 bits, passes BigCrush, several GB/s.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// Independent streams from one seed, so a region's content does not
    /// depend on how much was drawn before it.
    fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0).wrapping_mul(u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db));
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        let rem = chunks.into_remainder();
        if !rem.is_empty() {
            let v = self.next().to_le_bytes();
            let n = rem.len();
            rem.copy_from_slice(&v[..n]);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zero,
    Text,
    Random,
}

/// One piece of a record template.
#[derive(Debug)]
enum Piece {
    Lit(Vec<u8>),
    /// A word from the vocabulary.
    Word,
    /// A decimal number of up to this many digits.
    Num(u32),
    /// This many hex digits (ids, hashes).
    Hex(u32),
}

/// Log-like records: a few dozen templates of fixed text with variable
/// fields. The mix of literal text and fields is tuned so that `zstd -3`
/// compresses the result about 3x, like typical file-system contents
/// (logs, text, databases, binaries) rather than like a zero page.
#[derive(Debug)]
struct TextGen {
    words: Vec<Vec<u8>>,
    templates: Vec<Vec<Piece>>,
}

impl TextGen {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed, u64::MAX);
        const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
        let word = |rng: &mut Rng| -> Vec<u8> {
            let len = 2 + rng.below(9) as usize;
            // Skewed letter choice: frequent letters come up more often.
            (0..len)
                .map(|_| LETTERS[(rng.below(26) * rng.below(27) / 26) as usize])
                .collect()
        };
        let words: Vec<Vec<u8>> = (0..8192).map(|_| word(&mut rng)).collect();
        const SEPS: &[&[u8]] = &[
            b" ", b" ", b" ", b"=", b": ", b", ", b"/", b"_", b".", b" - ",
        ];
        let templates = (0..48)
            .map(|_| {
                let mut pieces = vec![
                    Piece::Lit(b"2024-".to_vec()),
                    Piece::Num(8),
                    Piece::Lit(b" ".to_vec()),
                ];
                let n = 5 + rng.below(8);
                for _ in 0..n {
                    let mut lit = words[rng.below(words.len() as u64) as usize].clone();
                    lit.extend_from_slice(SEPS[rng.below(SEPS.len() as u64) as usize]);
                    pieces.push(Piece::Lit(lit));
                    pieces.push(match rng.below(10) {
                        0..=2 => Piece::Word,
                        3..=6 => Piece::Num(1 + rng.below(6) as u32),
                        _ => Piece::Hex(8),
                    });
                    pieces.push(Piece::Lit(SEPS[rng.below(3) as usize].to_vec()));
                }
                pieces.push(Piece::Lit(b"\n".to_vec()));
                pieces
            })
            .collect();
        TextGen { words, templates }
    }

    /// Fill `buf` with whole records, the last one cut at the end.
    fn fill(&self, rng: &mut Rng, buf: &mut Vec<u8>, len: usize) {
        buf.clear();
        // Each call (one buffer, at most 1 MiB) draws from a window of 16
        // templates, like a file holding one application's records.
        let first = rng.below(self.templates.len() as u64) as usize;
        while buf.len() < len {
            let t = &self.templates[(first + rng.below(16) as usize) % self.templates.len()];
            for piece in t {
                match piece {
                    Piece::Lit(s) => buf.extend_from_slice(s),
                    Piece::Word => {
                        let i = rng.below(self.words.len() as u64) as usize;
                        buf.extend_from_slice(&self.words[i]);
                    }
                    Piece::Num(digits) => {
                        let d = 1 + rng.below(u64::from(*digits)) as u32;
                        push_decimal(buf, rng.below(10u64.pow(d)));
                    }
                    Piece::Hex(digits) => {
                        let v = rng.next();
                        for k in 0..*digits {
                            buf.push(b"0123456789abcdef"[((v >> (4 * k)) & 15) as usize]);
                        }
                    }
                }
            }
        }
        buf.truncate(len);
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Produces region contents one buffer at a time.
#[derive(Debug)]
struct Content {
    text: TextGen,
}

impl Content {
    fn new(seed: u64) -> Self {
        Content {
            text: TextGen::new(seed),
        }
    }

    /// Replaces the contents of `buf` with `len` bytes of `kind`.
    fn generate_into(&self, kind: Kind, rng: &mut Rng, buf: &mut Vec<u8>, len: usize) {
        match kind {
            Kind::Zero => {
                buf.clear();
                buf.resize(len, 0);
            }
            Kind::Random => {
                buf.resize(len, 0);
                rng.fill(&mut buf[..len]);
            }
            Kind::Text => self.text.fill(rng, buf, len),
        }
    }
}

// ------------------------------------------------------------------- layout

#[derive(Debug, Clone, Copy)]
struct Region {
    offset: u64,
    len: u64,
    kind: Kind,
}

/// Regions of log-uniform size covering `0..size`. Half of the kinds are
/// drawn at random by their target share, half go to the kind that is
/// furthest behind its share, so even small images get close to the mix.
fn layout(size: u64, fill: f64, max_region: u64, rng: &mut Rng) -> Vec<Region> {
    let kinds = [Kind::Zero, Kind::Text, Kind::Random];
    let share = [1.0 - fill, fill * 4.0 / 7.0, fill * 3.0 / 7.0];
    let mut done = [0u64; 3];
    let mut regions = Vec::new();
    let mut offset = 0;
    let max_region = max_region.clamp(MIN_REGION, MAX_REGION);
    let span = (max_region as f64 / MIN_REGION as f64).ln();
    while offset < size {
        let len = (MIN_REGION as f64 * (rng.unit() * span).exp()) as u64 / MIN_REGION * MIN_REGION;
        let len = len.clamp(MIN_REGION, max_region).min(size - offset);
        let k = if rng.below(2) == 0 {
            let r = rng.unit();
            if r < share[0] {
                0
            } else if r < share[0] + share[1] {
                1
            } else {
                2
            }
        } else {
            let total = (offset + len) as f64;
            (0..3)
                .max_by(|&a, &b| {
                    let da = share[a] * total - done[a] as f64;
                    let db = share[b] * total - done[b] as f64;
                    da.total_cmp(&db)
                })
                .unwrap_or(0)
        };
        done[k] += len;
        // Merge with the previous region of the same kind.
        match regions.last_mut() {
            Some(Region {
                len: prev, kind, ..
            }) if *kind == kinds[k] => *prev += len,
            _ => regions.push(Region {
                offset,
                len,
                kind: kinds[k],
            }),
        }
        offset += len;
    }
    regions
}

/// Writes the regions shifted by `base`; zero regions are left as holes.
/// Returns bytes written per kind.
///
/// Generating (user time) and writing (system time) take about as long as
/// each other, so a writer thread overlaps them; three recycled buffers
/// bound the memory.
fn write_regions(
    file: &File,
    path: &str,
    base: u64,
    regions: &[Region],
    content: &Content,
    seed: u64,
    stream: u64,
) -> Result<[u64; 3], Error> {
    const BUFFERS: usize = 3;
    let (full_tx, full_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(BUFFERS);
    let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        // Cannot fail: the channel has room for all of them.
        let _ = free_tx.send(Vec::with_capacity(BUF + 4096));
    }
    let mut per_kind = [0u64; 3];
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<()> {
            for (offset, buf) in full_rx {
                file.write_all_at(&buf, offset)?;
                // The generator may be gone already; then nobody needs it.
                let _ = free_tx.send(buf);
            }
            Ok(())
        });
        'regions: for (i, r) in regions.iter().enumerate() {
            per_kind[r.kind as usize] += r.len;
            if r.kind == Kind::Zero {
                continue;
            }
            let mut rng = Rng::new(seed, stream + i as u64);
            let mut pos = 0;
            while pos < r.len {
                let n = (r.len - pos).min(BUF as u64) as usize;
                let Ok(mut buf) = free_rx.recv() else {
                    break 'regions;
                };
                content.generate_into(r.kind, &mut rng, &mut buf, n);
                if full_tx.send((base + r.offset + pos, buf)).is_err() {
                    break 'regions; // the writer failed; join it for the error
                }
                pos += n as u64;
            }
        }
        drop(full_tx);
        writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")))
    });
    written.map_err(io_err(format!("write {path}")))?;
    Ok(per_kind)
}

// --------------------------------------------------------------- commands

fn create(path: &PathBuf) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))
}

fn base(a: &BaseArgs) -> Result<(), Error> {
    let start = Instant::now();
    let path = a.output.display().to_string();
    let file = create(&a.output)?;
    let regions = layout(a.size, a.fill, MAX_REGION, &mut Rng::new(a.seed, 0));
    let content = Content::new(a.seed);
    let per_kind = write_regions(&file, &path, 0, &regions, &content, a.seed, 1)?;
    file.set_len(a.size)
        .map_err(io_err(format!("truncate {path}")))?;
    let secs = start.elapsed().as_secs_f64();
    let pct = |b: u64| 100.0 * b as f64 / a.size.max(1) as f64;
    eprintln!(
        "gen_image base: {path}: {} ({} bytes), {} regions: zero {:.1}%, compressible {:.1}%, random {:.1}%; {:.2}s, {:.0} MB/s",
        human(a.size),
        a.size,
        regions.len(),
        pct(per_kind[0]),
        pct(per_kind[1]),
        pct(per_kind[2]),
        secs,
        a.size as f64 / secs / 1e6,
    );
    Ok(())
}

fn mutate(a: &MutateArgs) -> Result<(), Error> {
    let start = Instant::now();
    let in_path = a.input.display().to_string();
    let out_path = a.output.display().to_string();
    let input = File::open(&a.input).map_err(io_err(format!("open {in_path}")))?;
    let size = input
        .metadata()
        .map_err(io_err(format!("stat {in_path}")))?
        .len();
    if std::fs::canonicalize(&a.input).ok() == std::fs::canonicalize(&a.output).ok() {
        return Err(Error::Usage("--input and -o must differ".into()));
    }
    let out = create(&a.output)?;
    sparse_copy(&input, &in_path, &out, &out_path, size)?;
    out.set_len(size)
        .map_err(io_err(format!("truncate {out_path}")))?;

    // Pick distinct cluster-aligned extents inside the original size.
    let slots = size / a.cluster;
    let blocks_per_cluster = a.cluster / BLOCK;
    let wanted_blocks = (a.change * (size / BLOCK) as f64).round() as u64;
    let n = wanted_blocks.div_ceil(blocks_per_cluster).min(slots);
    let mut rng = Rng::new(a.seed, 0);
    let mut picked: Vec<u64> = Vec::with_capacity(n as usize);
    while (picked.len() as u64) < n {
        let missing = n - picked.len() as u64;
        picked.extend((0..missing).map(|_| rng.below(slots)));
        picked.sort_unstable();
        picked.dedup();
    }

    let content = Content::new(a.seed);
    let mut old = vec![0u8; a.cluster as usize];
    let mut new = Vec::with_capacity(a.cluster as usize + 4096);
    let mut changed_blocks = 0u64;
    let mut by_kind = [0u64; 3];
    for (i, &slot) in picked.iter().enumerate() {
        let offset = slot * a.cluster;
        input
            .read_exact_at(&mut old, offset)
            .map_err(io_err(format!("read {in_path}")))?;
        let old_zero = old
            .chunks(BLOCK as usize)
            .all(|b| b == &ZERO_BLOCK[..b.len()]);
        let mut crng = Rng::new(a.seed, 1 + i as u64);
        let kind = match crng.below(10) {
            0..=4 => Kind::Random,
            5..=7 => Kind::Text,
            _ if old_zero => Kind::Text,
            _ => Kind::Zero,
        };
        by_kind[kind as usize] += 1;
        content.generate_into(kind, &mut crng, &mut new, a.cluster as usize);
        changed_blocks += old
            .chunks(BLOCK as usize)
            .zip(new.chunks(BLOCK as usize))
            .filter(|(o, n)| o != n)
            .count() as u64;
        if kind == Kind::Zero {
            punch_hole(&out, offset, a.cluster)
                .map_err(io_err(format!("punch hole in {out_path}")))?;
        } else {
            out.write_all_at(&new, offset)
                .map_err(io_err(format!("write {out_path}")))?;
        }
    }

    if a.grow > 0 {
        let regions = layout(
            a.grow,
            0.7,
            a.grow.min(MAX_REGION),
            &mut Rng::new(a.seed, u64::MAX - 1),
        );
        write_regions(&out, &out_path, size, &regions, &content, a.seed, 1 << 40)?;
        out.set_len(size + a.grow)
            .map_err(io_err(format!("truncate {out_path}")))?;
    }

    let total = size + a.grow;
    let secs = start.elapsed().as_secs_f64();
    let changed = changed_blocks * BLOCK;
    eprintln!(
        "gen_image mutate: {out_path}: {} ({total} bytes), changed {} ({changed} bytes, {:.2}% of 4K blocks) in {} clusters of {} (random {}, compressible {}, zeroed {}), grown {}; {:.2}s, {:.0} MB/s",
        human(total),
        human(changed),
        100.0 * changed_blocks as f64 / (size / BLOCK).max(1) as f64,
        picked.len(),
        human(a.cluster),
        by_kind[Kind::Random as usize],
        by_kind[Kind::Text as usize],
        by_kind[Kind::Zero as usize],
        human(a.grow),
        secs,
        total as f64 / secs / 1e6,
    );
    Ok(())
}

/// Copies `input` to `out` writing only non-zero 4 KiB blocks; holes are
/// skipped with SEEK_DATA/SEEK_HOLE where the file system supports them.
fn sparse_copy(
    input: &File,
    in_path: &str,
    out: &File,
    out_path: &str,
    size: u64,
) -> Result<(), Error> {
    let mut buf = vec![0u8; BUF];
    for (start, end) in data_extents(input, size).map_err(io_err(format!("seek {in_path}")))? {
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(BUF as u64) as usize;
            input
                .read_exact_at(&mut buf[..n], pos)
                .map_err(io_err(format!("read {in_path}")))?;
            // Coalesce runs of non-zero blocks into one write.
            let mut run: Option<usize> = None;
            for (bi, b) in buf[..n].chunks(BLOCK as usize).enumerate() {
                let at = bi * BLOCK as usize;
                match (b == &ZERO_BLOCK[..b.len()], run) {
                    (false, None) => run = Some(at),
                    (true, Some(s)) => {
                        write_at(out, out_path, &buf[s..at], pos + s as u64)?;
                        run = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run {
                write_at(out, out_path, &buf[s..n], pos + s as u64)?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

fn write_at(file: &File, path: &str, data: &[u8], offset: u64) -> Result<(), Error> {
    file.write_all_at(data, offset)
        .map_err(io_err(format!("write {path}")))
}

/// The `[start, end)` data extents of `file`, or the whole file when the
/// file system cannot tell.
fn data_extents(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a file descriptor we own; no memory is involved.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(extents),
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) if pos == 0 => Ok(vec![(0, size)]),
                _ => Err(err),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        if end > start {
            extents.push((start, end));
        }
        pos = end.max(start + 1);
    }
    Ok(extents)
}

/// Deallocates `[offset, offset + len)`, or writes zeros where punching
/// holes is not supported.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on a file descriptor we own; no memory is involved.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            let zeros = vec![0u8; len as usize];
            file.write_all_at(&zeros, offset)
        }
        _ => Err(err),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1.5M"), Some(3 << 19));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn layout_covers_and_mixes() {
        let size = 2u64 << 30;
        let regions = layout(size, 0.7, MAX_REGION, &mut Rng::new(1, 0));
        let mut pos = 0;
        let mut per_kind = [0u64; 3];
        for r in &regions {
            assert_eq!(r.offset, pos);
            pos += r.len;
            per_kind[r.kind as usize] += r.len;
        }
        assert_eq!(pos, size);
        for (got, want) in per_kind.iter().zip([0.3, 0.4, 0.3]) {
            let share = *got as f64 / size as f64;
            assert!((share - want).abs() < 0.08, "{per_kind:?}");
        }
    }
}
