//! The `dia-tts` program end to end: reference audio from the tiny fixtures, voice prompts, error cases that
//! must leave no output behind, and downloads from a hub-style server on 127.0.0.1 (sharded, resumed, the
//! Hugging Face cache layout, unsafe shard names, corrupt LFS files) and caches used offline.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{fixtures_dir, load_expected, snr_db};

fn dia_tts(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dia-tts"));
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    // Tests leave the user's pipeline cache alone unless they name one.
    if !envs.iter().any(|(k, _)| *k == "DIA_PIPELINE_CACHE") {
        cmd.env("DIA_PIPELINE_CACHE", "off");
    }
    cmd.output().expect("run dia-tts")
}

fn read_wav(p: &Path) -> Vec<f32> {
    let bytes = std::fs::read(p).unwrap();
    dia_webgpu::pipeline::Audio::from_wav(&bytes).unwrap().samples
}

fn texts() -> Vec<String> {
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("expected.json")).unwrap()).unwrap();
    meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const GREEDY: [&str; 8] = ["--temperature", "0", "--cfg-filter-top-k", "45", "--max-new-tokens", "40", "--dtype", "f32"];

#[test]
fn cli_parity_text_and_voice_prompt() {
    let exp = load_expected(&fixtures_dir().join("expected.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    let text_file = dir.path().join("t0.txt");
    std::fs::write(&text_file, &texts()[0]).unwrap();
    let out = dir.path().join("x.wav");
    let base = ["--model", s(&dia), "--codec", s(&dac), "--text-file", s(&text_file), "--out", s(&out)];
    let o = dia_tts(&[&base[..], &GREEDY[..]].concat(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("steps/s") && summary.contains("real time"), "summary line: {summary}");
    let snr = snr_db(&read_wav(&out), &exp["t0.pcm"].1);
    println!("dia-tts t0: SNR {snr:.1} dB");
    assert!(snr >= 60.0);

    // Voice prompt: a float WAV of clone.prompt_pcm.
    let prompt = dir.path().join("prompt.wav");
    std::fs::write(&prompt, dia_webgpu::pipeline::wav_bytes(&exp["clone.prompt_pcm"].1, 44_100)).unwrap();
    let codes = dir.path().join("codes.json");
    let o = dia_tts(&[&base[..], &GREEDY[..], &["--prompt-audio", s(&prompt), "--codes-out", s(&codes)]].concat(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snr = snr_db(&read_wav(&out), &exp["clone.pcm"].1);
    println!("dia-tts clone: SNR {snr:.1} dB");
    assert!(snr >= 60.0);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&codes).unwrap()).unwrap();
    let rows = j["delayed_codes"].as_array().unwrap();
    let want = &exp["clone.generated"];
    assert_eq!(rows.len(), want.0[1]);
    assert_eq!(rows[50].as_array().unwrap()[3].as_u64().unwrap() as f32, want.1[50 * 9 + 3]);
}

#[test]
fn cli_bad_input_fails_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    let out = dir.path().join("never.wav");
    let truncated = dir.path().join("truncated");
    std::fs::create_dir(&truncated).unwrap();
    std::fs::copy(dia.join("config.json"), truncated.join("config.json")).unwrap();
    let full = std::fs::read(dia.join("model.safetensors")).unwrap();
    std::fs::write(truncated.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let bad_wav = dir.path().join("bad.wav");
    std::fs::write(&bad_wav, b"RIFF\x24\x00\x00\x00WAVEnot really").unwrap();
    // Beyond the largest script (a file: one argument may not be that long).
    let huge = dir.path().join("huge.txt");
    std::fs::write(&huge, "a".repeat(dia_webgpu::dia::segment::MAX_SCRIPT_BYTES + 1)).unwrap();
    let long_script = "[S1] A sentence of a long script. [S2] Another one here. ".repeat(20);
    let tags_only = "[S1][S2]".repeat(100);
    let prompt_wav = dir.path().join("prompt.wav");
    std::fs::write(&prompt_wav, dia_webgpu::pipeline::wav_bytes(&[0.1f32; 4410], 44_100)).unwrap();
    let nan_wav = dir.path().join("nan.wav");
    let mut samples = vec![0.25f32; 4410];
    samples[100] = f32::NAN;
    std::fs::write(&nan_wav, dia_webgpu::pipeline::wav_bytes(&samples, 44_100)).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--text", "", "--model", s(&dia), "--codec", s(&dac)], "empty"),
        (vec!["--text", " \n\t  ", "--model", s(&dia), "--codec", s(&dac)], "whitespace"),
        (vec!["--text", "hi", "--model", s(&dia), "--codec", s(&dac), "--prompt-audio", s(&nan_wav)], "finite"),
        (vec!["--text-file", s(&huge), "--model", s(&dia), "--codec", s(&dac)], "at most 262144 bytes"),
        (vec!["--text", &long_script, "--model", s(&dia), "--codec", s(&dac), "--prompt-audio", s(&prompt_wav)], "--prompt-text"),
        (vec!["--text", &tags_only, "--model", s(&dia), "--codec", s(&dac)], "nothing to speak"),
        (vec!["--text", "hi", "--model", s(&truncated), "--codec", s(&dac)], "model"),
        (vec!["--text", "hi", "--model", s(&dia), "--codec", s(dir.path())], "codec"),
        (vec!["--text", "hi", "--model", s(&dia), "--codec", s(&dac), "--prompt-audio", s(&bad_wav)], "WAV"),
        (vec!["--text", "hi", "--model", s(&dia), "--codec", s(&dac), "--top-p", "0"], "top"),
    ];
    for (args, needle) in cases {
        let o = dia_tts(&[&args[..], &["--out", s(&out), "--max-new-tokens", "20"]].concat(), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: message should mention {needle:?}: {err}");
        assert!(!out.exists(), "{args:?} left an output file");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("partial")).collect();
        assert!(leftovers.is_empty(), "{args:?} left a partial file");
        println!("{needle}: {}", err.trim());
    }
    // An output directory that does not exist fails before anything is loaded: the model named here does not
    // exist either, and the message is about the output.
    let missing = dir.path().join("no/such/dir/x.wav");
    for flag in ["--out", "--codes-out"] {
        let o = dia_tts(&["--text", "hi", "--model", "/nonexistent/model", "--codec", s(&dac), flag, s(&missing)], &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(flag) && err.contains("does not exist") && !err.contains("/nonexistent/model"), "{flag}: {err}");
        assert!(!dir.path().join("no").exists());
    }
    // No adapter: only a backend this machine cannot have.
    let o = dia_tts(&["--text", "hi", "--model", s(&dia), "--codec", s(&dac), "--out", s(&out)], &[("WGPU_BACKEND", Path::new("dx12"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no GPU adapter") && !out.exists(), "{err}");
}

/// Lengths cut before the EOS tail completes (which once panicked indexing past the generated rows) write a WAV.
#[test]
fn cli_short_max_new_tokens_write_a_wav() {
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    for n in ["1", "2", "15", "16", "17"] {
        let out = dir.path().join(format!("n{n}.wav"));
        let o = dia_tts(&["--text", "[S1] Short.", "--model", s(&dia), "--codec", s(&dac), "--out", s(&out), "--max-new-tokens", n], &[]);
        assert!(o.status.success(), "--max-new-tokens {n}: {}", String::from_utf8_lossy(&o.stderr));
        let pcm = read_wav(&out);
        assert!(pcm.len() % 512 == 0, "--max-new-tokens {n}: {} samples", pcm.len());
    }
}

/// `dia-tts convert` writes a checkpoint that loads in its mode by default and speaks exactly as converting on
/// load does; bad conversions fail with a message and write nothing.
#[test]
fn cli_convert_then_speak_in_the_converted_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    let q4 = dir.path().join("dia-q4");
    let o = dia_tts(&["convert", "--model", s(&dia), "--dtype", "q4", "--out", s(&q4)], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--dtype q4"), "{}", String::from_utf8_lossy(&o.stdout));
    let speak = |model: &Path, extra: &[&str], name: &str| {
        let out = dir.path().join(format!("{name}.wav"));
        let codes = dir.path().join(format!("{name}.json"));
        let args = [&["--text", "[S1] Short.", "--model", s(model), "--codec", s(&dac), "--out", s(&out), "--codes-out", s(&codes)][..], &GREEDY[..6], extra].concat();
        let o = dia_tts(&args, &[]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).into_owned(), std::fs::read(&out).unwrap(), std::fs::read(&codes).unwrap())
    };
    let (summary, wav, codes) = speak(&q4, &[], "converted");
    assert!(summary.contains("[q4]"), "a converted checkpoint loads in its own mode: {summary}");
    let (summary, wav_on_load, codes_on_load) = speak(&dia, &["--dtype", "q4"], "on-load");
    assert!(summary.contains("[q4]"), "{summary}");
    assert!(codes == codes_on_load && wav == wav_on_load, "converted and quantized-on-load speak alike");

    // Refusals: an existing output, a converted source, an unknown mode.
    for (args, says) in [
        (vec!["convert", "--model", s(&dia), "--dtype", "q8", "--out", s(&q4)], "already exists"),
        (vec!["convert", "--model", s(&q4), "--dtype", "q8", "--out", s(&dir.path().join("x"))], "already a converted checkpoint"),
        (vec!["convert", "--model", s(&dia), "--dtype", "q2", "--out", s(&dir.path().join("y"))], "invalid value"),
    ] {
        let o = dia_tts(&args, &[]);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains(says), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["converted.json", "converted.wav", "dia-q4", "on-load.json", "on-load.wav"]);
}

/// The commit every repository of the test hub resolves `main` to.
const COMMIT: &str = "6a1f0c3e9d2b4a5f8e7d6c5b4a39281706f5e4d3";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// One file of a test repository. LFS files are announced by their SHA-256 and served from `/cdn/{sha}`
/// through a 302, as the Hugging Face hub does; `served` replaces the bytes the CDN sends (corruption).
#[derive(Clone)]
struct HubFile {
    bytes: Vec<u8>,
    lfs: bool,
    served: Option<Vec<u8>>,
}

impl HubFile {
    fn git(bytes: Vec<u8>) -> HubFile {
        HubFile { bytes, lfs: false, served: None }
    }
    fn lfs(bytes: Vec<u8>) -> HubFile {
        HubFile { bytes, lfs: true, served: None }
    }
    /// The ETag the hub gives a file: its SHA-256 for LFS files, a git blob id (40 hex digits) otherwise.
    fn etag(&self) -> String {
        let sha = sha256_hex(&self.bytes);
        if self.lfs {
            sha
        } else {
            sha[..40].to_string()
        }
    }
}

/// A Hugging Face–style hub on 127.0.0.1: `/{repo}/resolve/{main or COMMIT}/{file}` answers HEAD and GET
/// with `X-Repo-Commit` and an ETag; LFS files redirect to `/cdn/{sha256}` with `X-Linked-Etag` and
/// `X-Linked-Size`. Range requests are honoured. Records every request as "METHOD PATH RANGE".
struct Hub {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
}

/// `data`, or the part of it that a `Range: bytes=N-` header asks for.
fn ranged(data: &[u8], range: Option<&str>) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    match range.and_then(|r| r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok())) {
        Some(from) if from < data.len() => tiny_http::Response::from_data(data[from..].to_vec())
            .with_status_code(206)
            .with_header(header("Content-Range", &format!("bytes {from}-{}/{}", data.len() - 1, data.len()))),
        Some(_) => tiny_http::Response::from_data(Vec::new()).with_status_code(416),
        None => tiny_http::Response::from_data(data.to_vec()),
    }
}

impl Hub {
    /// `repos`: "org/name" → file name → file.
    fn start(repos: BTreeMap<String, BTreeMap<String, HubFile>>) -> Hub {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let Ok(Some(req)) = server.recv_timeout(std::time::Duration::from_millis(100)) else { continue };
                let path = req.url().to_string();
                let range = req.headers().iter().find(|h| h.field.equiv("Range")).map(|h| h.value.to_string());
                log2.lock().unwrap().push(format!("{} {path} {}", req.method(), range.clone().unwrap_or_default()));
                let lookup = path.split_once("/resolve/").and_then(|(repo, rest)| {
                    let (rev, file) = rest.split_once('/')?;
                    let f = repos.get(repo.trim_start_matches('/'))?.get(file)?;
                    (rev == "main" || rev == COMMIT).then_some(f)
                });
                let cdn = path.strip_prefix("/cdn/").and_then(|sha| repos.values().flat_map(|r| r.values()).find(|f| f.lfs && f.etag() == sha));
                let _ = match (lookup, cdn) {
                    (Some(f), _) if f.lfs => req.respond(
                        tiny_http::Response::empty(302)
                            .with_header(header("Location", &format!("http://127.0.0.1:{port}/cdn/{}", f.etag())))
                            .with_header(header("X-Repo-Commit", COMMIT))
                            .with_header(header("X-Linked-Etag", &format!("\"{}\"", f.etag())))
                            .with_header(header("X-Linked-Size", &f.bytes.len().to_string())),
                    ),
                    (Some(f), _) => req.respond(
                        ranged(&f.bytes, range.as_deref()).with_header(header("X-Repo-Commit", COMMIT)).with_header(header("ETag", &format!("\"{}\"", f.etag()))),
                    ),
                    (None, Some(f)) => req.respond(ranged(f.served.as_ref().unwrap_or(&f.bytes), range.as_deref())),
                    (None, None) => req.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
                };
            }
        });
        Hub { port, log, stop, thread: Some(thread) }
    }

    fn url(&self) -> PathBuf {
        PathBuf::from(format!("http://127.0.0.1:{}", self.port))
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const DIA_REPO: &str = "nari-labs/Dia-1.6B-0626";
const DAC_REPO: &str = "descript/dac_44khz";

/// The tiny Dia split into two shards with an index, as the real 0626 checkpoint ships.
fn sharded_dia() -> BTreeMap<String, HubFile> {
    let fx = fixtures_dir();
    let all = load_expected(&fx.join("dia/model.safetensors"));
    let names: Vec<&String> = all.keys().collect();
    let half = names.len() / 2;
    let mut index = serde_json::Map::new();
    let mut shards = [Vec::new(), Vec::new()];
    for (i, n) in names.iter().enumerate() {
        let k = usize::from(i >= half);
        let (shape, data) = &all[*n];
        shards[k].push(((*n).clone(), shape.clone(), data.clone()));
        index.insert((*n).clone(), serde_json::Value::from(format!("model-0000{}-of-00002.safetensors", k + 1)));
    }
    BTreeMap::from([
        ("config.json".to_string(), HubFile::git(std::fs::read(fx.join("dia/config.json")).unwrap())),
        ("model.safetensors.index.json".to_string(), HubFile::git(serde_json::json!({ "weight_map": index }).to_string().into_bytes())),
        ("model-00001-of-00002.safetensors".to_string(), HubFile::lfs(common::nari::serialize_f32(&shards[0]))),
        ("model-00002-of-00002.safetensors".to_string(), HubFile::lfs(common::nari::serialize_f32(&shards[1]))),
    ])
}

fn single_file_dac() -> BTreeMap<String, HubFile> {
    let fx = fixtures_dir();
    BTreeMap::from([
        ("config.json".to_string(), HubFile::git(std::fs::read(fx.join("dac/config.json")).unwrap())),
        ("model.safetensors".to_string(), HubFile::lfs(std::fs::read(fx.join("dac/model.safetensors")).unwrap())),
    ])
}

fn repo_cache(hf_home: &Path, repo: &str) -> PathBuf {
    hf_home.join("hub").join(format!("models--{}", repo.replace('/', "--")))
}

/// Every file, symlink and directory under `dir` (symlinks not followed).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(tree(&p));
        }
    }
    out
}

#[test]
fn cli_downloads_sharded_checkpoint_with_resume() {
    let dia = sharded_dia();
    let dac = single_file_dac();
    let shard1 = dia["model-00001-of-00002.safetensors"].clone();
    let hub = Hub::start(BTreeMap::from([(DIA_REPO.to_string(), dia.clone()), (DAC_REPO.to_string(), dac.clone())]));

    let home = tempfile::tempdir().unwrap();
    // An interrupted earlier download of shard 1: the rest must be fetched with a Range request.
    let blobs = repo_cache(home.path(), DIA_REPO).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{}.incomplete", shard1.etag())), &shard1.bytes[..1000]).unwrap();

    let out = home.path().join("x.wav");
    let text = texts()[0].clone();
    let o = dia_tts(&[&["--text", &text, "--out", s(&out)][..], &GREEDY[..]].concat(), &[("HF_HOME", home.path()), ("HF_ENDPOINT", &hub.url())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = hub.requests();
    // The resolve answers a 302 to the CDN; the Range goes along.
    assert!(log.iter().any(|l| l == &format!("GET /cdn/{} bytes=1000-", shard1.etag())), "resumed with a Range request: {log:?}");
    assert!(log.iter().any(|l| l.contains("model-00002-of-00002")), "{log:?}");
    let exp = load_expected(&fixtures_dir().join("expected.safetensors"));
    assert!(snr_db(&read_wav(&out), &exp["t0.pcm"].1) >= 60.0, "downloaded model speaks like the fixture");

    // The Hugging Face cache layout: blobs by etag, snapshots/{commit} of relative links, refs/main = commit.
    for (repo, files) in [(DIA_REPO, &dia), (DAC_REPO, &dac)] {
        let dir = repo_cache(home.path(), repo);
        assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), COMMIT, "{repo}: refs/main");
        let mut blobs: Vec<String> = std::fs::read_dir(dir.join("blobs")).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        blobs.sort();
        let mut want: Vec<String> = files.values().map(HubFile::etag).collect();
        want.sort();
        assert_eq!(blobs, want, "{repo}: one blob per file, named by its etag, nothing incomplete left");
        let snap = dir.join("snapshots").join(COMMIT);
        let linked: Vec<String> = std::fs::read_dir(&snap).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
        assert_eq!(linked.len(), files.len(), "{repo}: {linked:?}");
        for (name, f) in files.iter() {
            let link = snap.join(name);
            assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../../blobs").join(f.etag()), "{repo}/{name}");
            assert_eq!(std::fs::read(&link).unwrap(), f.bytes, "{repo}/{name}: contents");
        }
        assert_eq!(std::fs::read_dir(dir.join("snapshots")).unwrap().count(), 1, "{repo}: only the commit's snapshot");
    }

    // Second run: everything comes from the cache, no request at all.
    let before = hub.requests().len();
    let o = dia_tts(&[&["--text", &text, "--out", s(&out)][..], &GREEDY[..]].concat(), &[("HF_HOME", home.path()), ("HF_ENDPOINT", &hub.url())]);
    assert!(o.status.success());
    assert_eq!(hub.requests().len(), before, "cached checkpoints are not fetched again");
}

#[test]
fn cli_refuses_index_with_unsafe_shard_names() {
    let root = tempfile::tempdir().unwrap();
    let hf_home = root.path().join("hf");
    let cache = hf_home.join("hub");
    let outside = root.path().join("abs/x");
    let good = sharded_dia();
    let weight_map = |bad: &str| {
        serde_json::json!({ "weight_map": { "a": "model-00001-of-00002.safetensors", "b": bad } }).to_string().into_bytes()
    };
    for bad in ["../../x", "../../../../../x", s(&outside), "sub/dir", "..\\..\\x", "C:x", ".."] {
        let mut dia = good.clone();
        dia.insert("model.safetensors.index.json".into(), HubFile::git(weight_map(bad)));
        dia.insert(bad.to_string(), HubFile::lfs(b"not for writing".to_vec())); // served, should it be asked for
        let hub = Hub::start(BTreeMap::from([(DIA_REPO.to_string(), dia), (DAC_REPO.to_string(), single_file_dac())]));
        let out = root.path().join("x.wav");
        let o = dia_tts(&["--text", "[S1] Hi.", "--out", s(&out), "--max-new-tokens", "20"], &[("HF_HOME", &hf_home), ("HF_ENDPOINT", &hub.url())]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{bad:?}: {err}");
        assert!(err.contains("not a plain file name") && err.contains(&format!("{bad:?}")), "{bad:?}: {err}");
        assert!(!out.exists(), "{bad:?}: no output");
        // Nothing but the config and the index was asked for, and nothing was written outside the cache.
        let log = hub.requests();
        assert!(
            log.iter().all(|l| l.contains("/config.json") || l.contains("/model.safetensors.index.json") || l.contains("/model.safetensors ")),
            "{bad:?}: {log:?}"
        );
        for p in tree(root.path()) {
            assert!(p == hf_home || p.starts_with(&cache), "{bad:?}: {} written outside the cache", p.display());
        }
        let dir = repo_cache(&hf_home, DIA_REPO);
        assert!(!dir.join("refs").exists() && !dir.join("snapshots").exists(), "{bad:?}: no snapshot of a refused repository");
        println!("{bad:?}: {}", err.trim());
    }
}

#[test]
fn cli_discards_a_corrupt_lfs_download() {
    let mut dia = sharded_dia();
    let shard2 = dia.get_mut("model-00002-of-00002.safetensors").unwrap();
    let mut bad = shard2.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    shard2.served = Some(bad);
    let sha = shard2.etag();
    let hub = Hub::start(BTreeMap::from([(DIA_REPO.to_string(), dia), (DAC_REPO.to_string(), single_file_dac())]));
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("x.wav");
    let o = dia_tts(&["--text", "[S1] Hi.", "--out", s(&out), "--max-new-tokens", "20"], &[("HF_HOME", home.path()), ("HF_ENDPOINT", &hub.url())]);
    let err = String::from_utf8_lossy(&o.stderr);
    println!("{}", err.trim());
    assert!(!o.status.success() && err.contains("SHA-256") && err.contains(&sha) && err.contains("model-00002-of-00002.safetensors"), "{err}");
    assert!(!out.exists(), "no output from a corrupt checkpoint");
    let dir = repo_cache(home.path(), DIA_REPO);
    assert!(!dir.join("blobs").join(&sha).exists() && !dir.join(format!("blobs/{sha}.incomplete")).exists(), "the bad bytes are not kept");
    assert!(!dir.join("refs").exists() && !dir.join("snapshots").exists(), "no snapshot names the corrupt file");
}

/// Writes `files` as huggingface_hub lays out a download of `revision` (`refs/main` = `revision`): blobs by
/// etag and relative links, or (`links` false) plain files in the snapshot, as our earlier versions did.
fn write_cache(hf_home: &Path, repo: &str, revision: &str, files: &BTreeMap<String, HubFile>, links: bool) {
    let dir = repo_cache(hf_home, repo);
    let snap = dir.join("snapshots").join(revision);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), revision).unwrap();
    for (name, f) in files {
        if links {
            std::fs::write(dir.join("blobs").join(f.etag()), &f.bytes).unwrap();
            std::os::unix::fs::symlink(Path::new("../../blobs").join(f.etag()), snap.join(name)).unwrap();
        } else {
            std::fs::write(snap.join(name), &f.bytes).unwrap();
        }
    }
}

#[test]
fn cli_uses_existing_caches_offline() {
    let home = tempfile::tempdir().unwrap();
    // Dia as huggingface_hub writes it; the DAC as our previous version did (snapshots/main, refs/main = main).
    write_cache(home.path(), DIA_REPO, COMMIT, &sharded_dia(), true);
    write_cache(home.path(), DAC_REPO, "main", &single_file_dac(), false);
    let hub = Hub::start(BTreeMap::new());
    let out = home.path().join("x.wav");
    let text = texts()[0].clone();
    let o = dia_tts(&[&["--text", &text, "--out", s(&out)][..], &GREEDY[..]].concat(), &[("HF_HOME", home.path()), ("HF_ENDPOINT", &hub.url())]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("bundled"), "{err}");
    assert_eq!(hub.requests(), Vec::<String>::new(), "complete caches need no request");
    let exp = load_expected(&fixtures_dir().join("expected.safetensors"));
    assert!(snr_db(&read_wav(&out), &exp["t0.pcm"].1) >= 60.0, "the cached model speaks like the fixture");
}

#[test]
fn cli_unreachable_hub_says_what_to_do_and_uses_the_bundled_model() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("x.wav");
    // Nothing listens on port 9 of the loopback address.
    let o = dia_tts(&["--text", "[S1] Hi.", "--out", s(&out), "--max-new-tokens", "30"], &[("HF_HOME", home.path()), ("HF_ENDPOINT", Path::new("http://127.0.0.1:9"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("bundled tiny model") && err.contains("--model DIR --codec DIR") && err.contains("HF_ENDPOINT"), "{err}");
    assert!(out.exists());
}

/// A long script (issue 16) on the bundled tiny model (4 kB, 40 turns): one WAV of every segment's frames, the summary line counts
/// the segments, --codes-out lists them, and the same seed gives the same WAV.
#[test]
fn cli_long_text_file_is_spoken_in_segments() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = common::repo_root().join("assets/tiny");
    let (dia, dac) = (bundled.join("dia"), bundled.join("dac"));
    let script: String = (0..40)
        .map(|i| format!("[S{}] This is line {i} of a long script (laughs), and it goes on for a while. Does it end? Not yet, no.", 1 + i % 2))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(script.len() >= 4000, "{} bytes", script.len());
    let text_file = dir.path().join("script.txt");
    std::fs::write(&text_file, &script).unwrap();
    let (out, codes) = (dir.path().join("long.wav"), dir.path().join("codes.json"));
    let args = [
        "--text-file", s(&text_file), "--model", s(&dia), "--codec", s(&dac), "--out", s(&out),
        "--codes-out", s(&codes), "--max-new-tokens", "24", "--seed", "5",
    ];
    let o = dia_tts(&args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = String::from_utf8_lossy(&o.stdout);
    println!("{summary}");
    let n: usize = summary.split(" segments").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no segment count: {summary}"));
    assert!(n >= 4, "{summary}");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&codes).unwrap()).unwrap();
    let segments = j["segments"].as_array().unwrap();
    assert_eq!(segments.len(), n);
    // The WAV holds every segment's frames (at most 8 each: 24 rows, ended by length if not by EOS).
    let frames: usize = segments
        .iter()
        .map(|seg| {
            let rows: Vec<u32> = seg["delayed_codes"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32)).collect();
            let prefix = seg["prefix_rows"].as_u64().unwrap() as usize;
            dia_webgpu::dia::delay::codes_for_decode(&rows, &[0, 8, 9, 10, 11, 12, 13, 14, 15], 1026, 1025, 1024, Some(prefix)).len() / 9
        })
        .sum();
    let pcm = read_wav(&out);
    assert!(frames > 0 && frames <= n * 8, "{frames} frames");
    assert_eq!(pcm.len(), frames * 512);
    assert!(pcm.iter().all(|x| x.is_finite()));
    let first = std::fs::read(&out).unwrap();
    let o = dia_tts(&args, &[]);
    assert!(o.status.success());
    assert!(std::fs::read(&out).unwrap() == first, "same seed, different WAV");
}

/// `--batch`: one WAV per non-empty line (`<stem>-<n>.wav`), each as the line spoken alone (greedy), the same bytes
/// whatever the batch size (also sampled), and nothing else written.
#[test]
fn cli_batch_writes_one_wav_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    let t = texts();
    let lines = [t[0].as_str(), "", t[1].as_str(), "   ", "[S2] A third line, a little longer than the others are."];
    let text_file = dir.path().join("lines.txt");
    std::fs::write(&text_file, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("take.wav");
    let base = ["--model", s(&dia), "--codec", s(&dac), "--text-file", s(&text_file), "--out", s(&out), "--batch"];
    let numbered = |n: usize| dir.path().join(format!("take-{n}.wav"));
    let run = |extra: &[&str]| {
        let o = dia_tts(&[&base[..], extra].concat(), &[]);
        assert!(o.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        println!("{}{}", String::from_utf8_lossy(&o.stderr), String::from_utf8_lossy(&o.stdout));
        (String::from_utf8_lossy(&o.stdout).to_string(), (1..=3).map(|n| std::fs::read(numbered(n)).unwrap()).collect::<Vec<_>>())
    };
    let (summary, by_two) = run(&[&GREEDY[..], &["--batch-size", "2"]].concat());
    assert!(summary.contains("3 WAVs") && summary.contains("2 batches"), "{summary}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert_eq!(names, ["lines.txt", "take-1.wav", "take-2.wav", "take-3.wav"], "one WAV per non-empty line, nothing else");
    // Each line as if spoken alone.
    for (n, line) in [lines[0], lines[2], lines[4]].into_iter().enumerate() {
        let alone = dir.path().join("alone.wav");
        let o = dia_tts(&[&["--model", s(&dia), "--codec", s(&dac), "--text", line, "--out", s(&alone)], &GREEDY[..]].concat(), &[]);
        assert!(o.status.success());
        let (got, want) = (read_wav(&numbered(n + 1)), read_wav(&alone));
        assert_eq!(got.len(), want.len(), "line {}", n + 1);
        if !want.is_empty() {
            assert!(snr_db(&got, &want) >= 60.0, "line {}: SNR {:.1} dB", n + 1, snr_db(&got, &want));
        }
    }
    // The automatic batch size (all three at once here) writes the same bytes.
    let (summary, auto) = run(&GREEDY);
    assert!(summary.contains("1 batch "), "{summary}");
    assert!(auto == by_two, "greedy: batch size 2 and automatic differ");
    // Sampled: the same bytes for batches of 1 and of 3.
    let sampled = ["--seed", "5", "--max-new-tokens", "30", "--dtype", "f32"];
    let (_, ones) = run(&[&sampled[..], &["--batch-size", "1"]].concat());
    let (_, threes) = run(&[&sampled[..], &["--batch-size", "3"]].concat());
    assert!(ones == threes, "sampled: batch sizes 1 and 3 differ");
    assert!(ones != auto, "sampling changed nothing");
}

/// `--batch` mistakes fail before anything is written, naming the line or the option.
#[test]
fn cli_batch_bad_input_fails_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    let good = dir.path().join("good.txt");
    std::fs::write(&good, "[S1] One.\n[S2] Two.\n").unwrap();
    let long = dir.path().join("long.txt");
    std::fs::write(&long, format!("[S1] Fine.\n\n[S2] {}\n", "word ".repeat(300))).unwrap();
    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, "\n  \n\n").unwrap();
    let out = dir.path().join("never.wav");
    let model = ["--model", s(&dia), "--codec", s(&dac), "--out", s(&out)];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--batch", "--text-file", s(&long)], "line 3 of"),
        (vec!["--batch", "--text-file", s(&blank)], "empty"),
        (vec!["--batch", "--text-file", s(&good), "--batch-size", "0"], "--batch-size"),
        (vec!["--batch", "--text-file", s(&good), "--batch-size", "65"], "--batch-size"),
        (vec!["--batch", "--text-file", s(&good), "--batch-size=-2"], "--batch-size"),
        (vec!["--batch", "--text", "[S1] Hi."], "--text-file"),
        (vec!["--text-file", s(&good), "--batch-size", "2"], "--batch"),
    ];
    for (args, needle) in cases {
        let o = dia_tts(&[&args[..], &model[..]].concat(), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: message should mention {needle:?}: {err}");
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| !e.file_name().to_string_lossy().ends_with(".txt")).collect();
        assert!(written.is_empty(), "{args:?} wrote {written:?}");
        println!("{needle}: {}", err.lines().next().unwrap_or(""));
    }
}

/// `dia-tts` prepares its pipelines after loading and says so; `DIA_PIPELINE_CACHE=<dir>` receives the driver's
/// pipeline cache (where the adapter has one) and a second run finds it; `DIA_PIPELINE_CACHE=off` uses none.
#[test]
fn cli_pipeline_cache_follows_dia_pipeline_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("pipelines");
    let (dia, dac) = (fixtures_dir().join("dia"), fixtures_dir().join("dac"));
    let out = dir.path().join("x.wav");
    let args = ["--text", "[S1] Hello there.", "--model", s(&dia), "--codec", s(&dac), "--out", s(&out), "--max-new-tokens", "10"];
    let run = |setting: &Path| {
        let o = dia_tts(&args, &[("DIA_PIPELINE_CACHE", setting)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let first = run(&cache);
    println!("{first}");
    assert!(first.contains(" pipelines in "), "summary line: {first}");
    let files = || std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    if first.contains("cache miss: no file yet") {
        assert_eq!(files(), 1);
        let second = run(&cache);
        assert!(second.contains("(cache hit"), "summary line: {second}");
    } else {
        assert!(first.contains("(no pipeline cache on this adapter)"), "summary line: {first}");
        assert_eq!(files(), 0);
    }
    let off = run(Path::new("off"));
    assert!(off.contains("(no cache)"), "summary line: {off}");
}
