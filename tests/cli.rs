//! The `dia-tts` program end to end: reference audio from the tiny fixtures, voice prompts, error cases that
//! must leave no output behind, and downloads from a hub-style server on 127.0.0.1 (sharded, resumed).
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
    let long = "a".repeat(1025);
    let nan_wav = dir.path().join("nan.wav");
    let mut samples = vec![0.25f32; 4410];
    samples[100] = f32::NAN;
    std::fs::write(&nan_wav, dia_webgpu::pipeline::wav_bytes(&samples, 44_100)).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--text", "", "--model", s(&dia), "--codec", s(&dac)], "empty"),
        (vec!["--text", " \n\t  ", "--model", s(&dia), "--codec", s(&dac)], "whitespace"),
        (vec!["--text", "hi", "--model", s(&dia), "--codec", s(&dac), "--prompt-audio", s(&nan_wav)], "finite"),
        (vec!["--text", &long, "--model", s(&dia), "--codec", s(&dac)], "1024"),
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

/// A hub-style file server on 127.0.0.1: `/{repo}/resolve/main/{file}` with Range support. Records requests.
struct Hub {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hub {
    fn start(files: BTreeMap<String, Vec<u8>>) -> Hub {
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
                log2.lock().unwrap().push(format!("{path} {}", range.clone().unwrap_or_default()));
                let _ = match files.get(&path) {
                    None => req.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
                    Some(data) => match range.and_then(|r| r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok())) {
                        Some(from) if from < data.len() => req.respond(tiny_http::Response::from_data(data[from..].to_vec()).with_status_code(206)),
                        _ => req.respond(tiny_http::Response::from_data(data.clone())),
                    },
                };
            }
        });
        Hub { port, log, stop, thread: Some(thread) }
    }

    fn url(&self) -> PathBuf {
        PathBuf::from(format!("http://127.0.0.1:{}", self.port))
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

#[test]
fn cli_downloads_sharded_checkpoint_with_resume() {
    let fx = fixtures_dir();
    // The tiny Dia split into two shards with an index, as the real 0626 checkpoint ships.
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
    let mut files = BTreeMap::new();
    let dia = "/nari-labs/Dia-1.6B-0626/resolve/main";
    let dac = "/descript/dac_44khz/resolve/main";
    files.insert(format!("{dia}/config.json"), std::fs::read(fx.join("dia/config.json")).unwrap());
    files.insert(format!("{dia}/model.safetensors.index.json"), serde_json::json!({ "weight_map": index }).to_string().into_bytes());
    let shard1 = common::nari::serialize_f32(&shards[0]);
    files.insert(format!("{dia}/model-00001-of-00002.safetensors"), shard1.clone());
    files.insert(format!("{dia}/model-00002-of-00002.safetensors"), common::nari::serialize_f32(&shards[1]));
    files.insert(format!("{dac}/config.json"), std::fs::read(fx.join("dac/config.json")).unwrap());
    files.insert(format!("{dac}/model.safetensors"), std::fs::read(fx.join("dac/model.safetensors")).unwrap());
    let hub = Hub::start(files);

    let home = tempfile::tempdir().unwrap();
    // An interrupted earlier download of shard 1: the rest must be fetched with a Range request.
    let snap = home.path().join("hub/models--nari-labs--Dia-1.6B-0626/snapshots/main");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(snap.join("model-00001-of-00002.safetensors.incomplete"), &shard1[..1000]).unwrap();

    let out = home.path().join("x.wav");
    let text = texts()[0].clone();
    let o = dia_tts(&[&["--text", &text, "--out", s(&out)][..], &GREEDY[..]].concat(), &[("HF_HOME", home.path()), ("HF_ENDPOINT", &hub.url())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = hub.log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.contains("model-00001-of-00002.safetensors bytes=1000-")), "resumed with a Range request: {log:?}");
    assert!(log.iter().any(|l| l.contains("model-00002-of-00002")), "{log:?}");
    let exp = load_expected(&fx.join("expected.safetensors"));
    assert!(snr_db(&read_wav(&out), &exp["t0.pcm"].1) >= 60.0, "downloaded model speaks like the fixture");

    // Second run: everything comes from the cache, no request at all.
    let before = hub.log.lock().unwrap().len();
    let o = dia_tts(&[&["--text", &text, "--out", s(&out)][..], &GREEDY[..]].concat(), &[("HF_HOME", home.path()), ("HF_ENDPOINT", &hub.url())]);
    assert!(o.status.success());
    assert_eq!(hub.log.lock().unwrap().len(), before, "cached checkpoints are not fetched again");
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
