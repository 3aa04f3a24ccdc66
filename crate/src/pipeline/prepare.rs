//! First audio at once, also the first time: `Tts::prepare` compiles every pipeline a generation will use while
//! the models load, and natively keeps the compiled pipelines across runs in the driver's pipeline cache
//! (`PipelineCacheDir`, docs/pipeline-cache.md).
//!
//! The list of pipelines is not written down anywhere: `Tts::pipelines` builds the dispatches of every kind of
//! request under `Gpu::begin_discovery` (which compiles, allocates and runs nothing) and takes what they asked
//! for, so it cannot drift from what generation builds.

use crate::dia::{GenerateOptions, Session};
use crate::gpu::PipelineSet;

use super::stream::STREAM_FRAMES;
use super::{PipelineError, Tts};

/// What `Tts::prepare` did.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Distinct pipelines a generation can use.
    pub pipelines: usize,
    /// How many of them were compiled now (the others were compiled before).
    pub compiled: usize,
    /// Wall time of listing and compiling them (and of reading and writing the cache file).
    pub seconds: f64,
    /// Where the compiled code came from.
    pub cache: CacheUse,
}

/// The driver pipeline cache's part in a `prepare`.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheUse {
    /// None was asked for (the browser; `DIA_PIPELINE_CACHE=off`; no cache directory).
    Off,
    /// The device cannot keep compiled pipelines (wgpu's `PIPELINE_CACHE` is a Vulkan feature).
    Unsupported,
    /// Started from the file an earlier run stored (`bytes` long).
    Hit { bytes: usize },
    /// Nothing usable was stored (`why`): compiled from scratch.
    Miss { why: String },
}

impl std::fmt::Display for Prepared {
    /// "compiled 212 of 212 pipelines in 1.52 s (cache miss: no file yet)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = match &self.cache {
            CacheUse::Off => "no cache".to_string(),
            CacheUse::Unsupported => "no cache on this backend".to_string(),
            CacheUse::Hit { bytes } => format!("cache hit, {} KiB", bytes.div_ceil(1024)),
            CacheUse::Miss { why } => format!("cache miss: {why}"),
        };
        write!(f, "compiled {} of {} pipelines in {:.2} s ({cache})", self.compiled, self.pipelines, self.seconds)
    }
}

/// Lengths that reach every length-dependent kernel specialisation below `max`: every length up to 64 (the
/// matrix–vector kernels are shaped per row count up to 16 and run in 16-row blocks up to 32; attention over one
/// chunk or several), then steps of at most 1/8 up to `max` itself (the tiled, tensor-core and codec kernels pick
/// their tile by how many workgroups a length gives, which changes at thresholds that are wider apart).
fn warm_lengths(max: usize) -> Vec<usize> {
    let mut lengths: Vec<usize> = (1..=max.min(64)).collect();
    let mut n = 64;
    while n < max {
        n = (n + n.div_ceil(8)).min(max);
        lengths.push(n);
    }
    lengths
}

impl Tts<'_> {
    /// Every pipeline that generating with these models can use, compiled or not: batch-1 requests with texts of
    /// every length, with and without a voice prompt (of every length; prompt audio only where the codec has its
    /// encoder, prompt codes in any case: long scripts continue the previous segment), the sampler, and the
    /// streaming codec's windows of every length. Builds those requests' dispatches under
    /// `Gpu::begin_discovery`: nothing is compiled, allocated or run.
    pub fn pipelines(&self) -> Result<PipelineSet, PipelineError> {
        self.gpu.begin_discovery();
        let built = self.build_every_request();
        let set = self.gpu.end_discovery();
        built.map(|()| set)
    }

    fn build_every_request(&self) -> Result<(), PipelineError> {
        let (gpu, dia, cfg) = (self.gpu, self.dia, &self.dia.cfg);
        let c = cfg.decoder.channels;
        let default = GenerateOptions::default();
        // Any text token will do: the kernels depend on how many there are.
        let token = |n: usize| vec![vec![u32::from(b'a'); n]];
        for n in warm_lengths(cfg.encoder.max_positions) {
            drop(Session::from_tokens(gpu, dia, &token(n), None, &default, false)?);
        }
        // A short generation's key/value cache fits one attention chunk: its own kernels.
        let short = GenerateOptions { max_new_tokens: 1, ..default.clone() };
        drop(Session::from_tokens(gpu, dia, &token(1), None, &short, false)?);
        // Prompt frames: the prefill pass, shaped by their number.
        let max_delay = cfg.delay_pattern.iter().copied().max().unwrap_or(0);
        let most_frames = cfg.decoder.max_positions.saturating_sub(2 + max_delay);
        for frames in warm_lengths(most_frames) {
            let prompt = vec![0u32; frames * c];
            drop(Session::from_tokens(gpu, dia, &token(1), Some(&prompt), &short, false)?);
        }
        if self.dac.has_encoder() {
            // Prompt audio as long as the decoder could continue (a whole number of 512-sample frames, as
            // `prompt_codes` pads it).
            let hop = self.dac.pcm_len(1);
            for frames in warm_lengths(most_frames) {
                drop(self.dac.encode_graph(gpu, &vec![0.0; frames * hop])?);
            }
        }
        let (left, right) = self.dac.decoder_context();
        let mut codec = self.dac.stream_decoder(gpu, STREAM_FRAMES + left + right)?;
        codec.plan_every_window(gpu);
        Ok(())
    }

    /// Compiles every pipeline `pipelines` lists that is not compiled yet (natively on every core), so the first
    /// generation starts as fast as later ones. No cache across runs: see `prepare_cached`.
    pub fn prepare(&self) -> Result<Prepared, PipelineError> {
        let t0 = web_time::Instant::now();
        let set = self.pipelines()?;
        let pipelines = set.len();
        let compiled = self.gpu.compile_all(set, compile_threads());
        self.gpu.check().map_err(crate::dia::DiaError::from)?;
        Ok(Prepared { pipelines, compiled, seconds: t0.elapsed().as_secs_f64(), cache: CacheUse::Off })
    }
}

/// Threads compiling at once: every core natively (2 at least), one in the browser.
fn compile_threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use disk::{cache_file_name, read_cache_file, write_cache_file, PipelineCacheDir};

/// The driver's pipeline cache kept in a file between runs (native Vulkan).
#[cfg(not(target_arch = "wasm32"))]
mod disk {
    use std::path::{Path, PathBuf};

    use sha2::{Digest, Sha256};

    use super::{compile_threads, CacheUse, Prepared};
    use crate::gpu::PipelineSet;
    use crate::pipeline::{PipelineError, Tts};

    /// Where compiled pipelines are kept between runs: `$XDG_CACHE_HOME/dia-webgpu/pipelines` (else
    /// `~/.cache/dia-webgpu/pipelines`), one file per GPU, driver, crate version and set of shaders.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PipelineCacheDir(pub PathBuf);

    impl PipelineCacheDir {
        /// The user's cache directory, or None with `DIA_PIPELINE_CACHE=off` (or where no home is known);
        /// `DIA_PIPELINE_CACHE=<absolute directory>` names another (without moving the driver's own shader cache,
        /// which also follows `XDG_CACHE_HOME`).
        pub fn from_env() -> Option<PipelineCacheDir> {
            Self::from_vars(|name| std::env::var_os(name))
        }

        /// `from_env` over any variable lookup (tests).
        pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PipelineCacheDir> {
            if var("DIA_PIPELINE_CACHE").is_some_and(|v| v.eq_ignore_ascii_case("off") || v == "0") {
                return None;
            }
            if let Some(dir) = var("DIA_PIPELINE_CACHE").filter(|v| Path::new(v).is_absolute()) {
                return Some(PipelineCacheDir(PathBuf::from(dir)));
            }
            let base = match var("XDG_CACHE_HOME").filter(|v| Path::new(v).is_absolute()) {
                Some(dir) => PathBuf::from(dir),
                None => PathBuf::from(var("HOME").filter(|h| !h.is_empty())?).join(".cache"),
            };
            Some(PipelineCacheDir(base.join("dia-webgpu").join("pipelines")))
        }
    }

    /// The file name for this adapter and pipeline set: wgpu's key for the device (vendor and device ids), then a
    /// digest of the driver's version, this crate's version and every compiled (entry point, WGSL source). The
    /// sources rather than the binary: they are exactly what the driver compiles (any change of a kernel, of its
    /// generator, of the model's shapes or of the numerics mode gives another file, an unrelated change of the
    /// program does not), they exist the same way for a library user's own program, and hashing them takes
    /// milliseconds where reading the binary would not. None where wgpu keeps no cache for the backend.
    pub fn cache_file_name(info: &wgpu::AdapterInfo, set: &PipelineSet) -> Option<String> {
        let key = wgpu::util::pipeline_cache_key(info)?;
        let mut h = Sha256::new();
        for part in [info.driver.as_str(), info.driver_info.as_str(), env!("CARGO_PKG_VERSION")] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let mut sources: Vec<(&str, &str)> = set.sources().collect();
        sources.sort_unstable();
        for (entry, source) in sources {
            for part in [entry, source] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
        }
        let digest = h.finalize();
        let build: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("{key}-{build}.bin"))
    }

    /// The file's first bytes; then the payload's length (u64 LE), its SHA-256 and the payload (wgpu's cache
    /// data). wgpu checks only its own header, not the contents it hands the driver: the digest keeps a damaged
    /// file from reaching it.
    const MAGIC: &[u8; 8] = b"DIAPLC01";
    const HEADER: usize = 8 + 8 + 32;

    /// The cache data stored in `path`, or why there is none usable (missing, truncated, damaged).
    pub fn read_cache_file(path: &Path) -> Result<Vec<u8>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no file yet".into()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(format!("{} is not a pipeline cache file", path.display()));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let payload = &bytes[HEADER..];
        if payload.len() as u64 != len {
            return Err(format!("{} is truncated ({} of {len} bytes)", path.display(), payload.len()));
        }
        if Sha256::digest(payload).as_slice() != &bytes[16..48] {
            return Err(format!("{} is damaged (digest mismatch)", path.display()));
        }
        Ok(payload.to_vec())
    }

    /// Stores `data` in `path` atomically (a temporary file in the same directory, then a rename), creating the
    /// directory; then removes the other files of the same device (`stale_prefix`) that earlier builds or drivers
    /// left.
    pub fn write_cache_file(path: &Path, data: &[u8], stale_prefix: Option<&str>) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut bytes = Vec::with_capacity(HEADER + data.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha256::digest(data));
        bytes.extend_from_slice(data);
        let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        if let (Some(prefix), Ok(entries)) = (stale_prefix, std::fs::read_dir(dir)) {
            for e in entries.flatten() {
                let other = e.file_name().to_string_lossy().into_owned();
                if other != name && other.starts_with(prefix) && other.ends_with(".bin") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    impl Tts<'_> {
        /// `prepare` through the driver's pipeline cache kept in `dir` (None: no cache): pipelines compiled by an
        /// earlier run with the same GPU, driver, build and shaders are loaded instead of compiled again, and the
        /// cache is written back (atomically) when it changed. Every later compile on this device goes through the
        /// same cache. A missing, unreadable, damaged or unwritable cache only costs the compile: the returned
        /// note (one line) says why, if anything went wrong beyond there being no file yet.
        pub fn prepare_cached(&self, dir: Option<&PipelineCacheDir>) -> Result<(Prepared, Option<String>), PipelineError> {
            let t0 = web_time::Instant::now();
            let set = self.pipelines()?;
            let pipelines = set.len();
            let gpu = self.gpu;
            let file = dir.and_then(|d| cache_file_name(&gpu.info, &set).map(|name| d.0.join(name)));
            let mut note = None;
            let (cache, loaded) = match &file {
                None if dir.is_none() => (CacheUse::Off, None),
                None => (CacheUse::Unsupported, None),
                Some(path) => match read_cache_file(path) {
                    Ok(data) => (CacheUse::Hit { bytes: data.len() }, Some(data)),
                    Err(why) => {
                        if why != "no file yet" {
                            note = Some(format!("pipeline cache: {why}; compiling anew"));
                        }
                        (CacheUse::Miss { why }, None)
                    }
                },
            };
            let cache = if file.is_some() && !gpu.use_pipeline_cache(loaded.as_deref()) { CacheUse::Unsupported } else { cache };
            let compiled = gpu.compile_all(set, compile_threads());
            gpu.check().map_err(crate::dia::DiaError::from)?;
            if let (Some(path), Some(data)) = (&file, gpu.pipeline_cache_data()) {
                if loaded.as_deref() != Some(data.as_slice()) {
                    let prefix = wgpu::util::pipeline_cache_key(&gpu.info).map(|k| format!("{k}-"));
                    if let Err(e) = write_cache_file(path, &data, prefix.as_deref()) {
                        note = Some(format!("pipeline cache: cannot write {}: {e}; compiled pipelines are not kept", path.display()));
                    }
                }
            }
            Ok((Prepared { pipelines, compiled, seconds: t0.elapsed().as_secs_f64(), cache }, note))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_cache_directory_follows_xdg_and_can_be_turned_off() {
            let vars = |pairs: &'static [(&'static str, &'static str)]| move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into());
            let dir = |p: &str| Some(PipelineCacheDir(PathBuf::from(p)));
            assert_eq!(PipelineCacheDir::from_vars(vars(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])), dir("/x/dia-webgpu/pipelines"));
            assert_eq!(PipelineCacheDir::from_vars(vars(&[("HOME", "/h")])), dir("/h/.cache/dia-webgpu/pipelines"));
            // A relative XDG_CACHE_HOME is invalid (XDG base directory spec): ignored.
            assert_eq!(PipelineCacheDir::from_vars(vars(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])), dir("/h/.cache/dia-webgpu/pipelines"));
            assert_eq!(PipelineCacheDir::from_vars(vars(&[("DIA_PIPELINE_CACHE", "off"), ("HOME", "/h")])), None);
            assert_eq!(PipelineCacheDir::from_vars(vars(&[("DIA_PIPELINE_CACHE", "/d"), ("HOME", "/h")])), dir("/d"));
            assert_eq!(PipelineCacheDir::from_vars(vars(&[])), None);
        }

        #[test]
        fn a_damaged_cache_file_is_refused_with_a_reason() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sub/k-1.bin");
            write_cache_file(&path, b"driver data", None).unwrap();
            assert_eq!(read_cache_file(&path).unwrap(), b"driver data");
            let good = std::fs::read(&path).unwrap();
            std::fs::write(&path, &good[..good.len() - 3]).unwrap();
            assert!(read_cache_file(&path).unwrap_err().contains("truncated"));
            let mut flipped = good.clone();
            *flipped.last_mut().unwrap() ^= 1;
            std::fs::write(&path, &flipped).unwrap();
            assert!(read_cache_file(&path).unwrap_err().contains("damaged"));
            std::fs::write(&path, b"garbage").unwrap();
            assert!(read_cache_file(&path).unwrap_err().contains("not a pipeline cache"));
            assert_eq!(read_cache_file(&dir.path().join("none.bin")).unwrap_err(), "no file yet");
        }

        #[test]
        fn writing_replaces_the_files_of_older_builds_of_the_same_device() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("dev1-old.bin"), b"x").unwrap();
            std::fs::write(dir.path().join("dev2-other.bin"), b"x").unwrap();
            write_cache_file(&dir.path().join("dev1-new.bin"), b"data", Some("dev1-")).unwrap();
            let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            names.sort();
            assert_eq!(names, ["dev1-new.bin", "dev2-other.bin"]);
        }
    }
}
