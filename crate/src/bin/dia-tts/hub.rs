//! Finding checkpoints: the standard Hugging Face cache first, then a download from the hub (or
//! `$HF_ENDPOINT`) with progress and resume, into that same cache.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

pub const DIA_REPO: &str = "nari-labs/Dia-1.6B-0626";
pub const DAC_REPO: &str = "descript/dac_44khz";

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

fn repo_dir(repo: &str) -> PathBuf {
    cache_root().join(format!("models--{}", repo.replace('/', "--")))
}

/// A complete checkpoint directory: config plus weights (single file, or an index whose shards are all there).
pub fn is_complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    if dir.join("model.safetensors").is_file() {
        return true;
    }
    match fs::read_to_string(dir.join("model.safetensors.index.json")) {
        Ok(s) => shard_names(&s).map(|names| names.iter().all(|n| dir.join(n).is_file())).unwrap_or(false),
        Err(_) => false,
    }
}

fn shard_names(index_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(index_json).map_err(|e| format!("bad index json: {e}"))?;
    let map = v["weight_map"].as_object().ok_or("index json has no weight_map")?;
    let mut names: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// The cached snapshot of `repo` if complete: the one `refs/main` names, else any complete snapshot.
pub fn find_cached(repo: &str) -> Option<PathBuf> {
    let dir = repo_dir(repo);
    if let Ok(r) = fs::read_to_string(dir.join("refs/main")) {
        let snap = dir.join("snapshots").join(r.trim());
        if is_complete(&snap) {
            return Some(snap);
        }
    }
    fs::read_dir(dir.join("snapshots")).ok()?.flatten().map(|e| e.path()).find(|p| is_complete(p))
}

pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string()).trim_end_matches('/').to_string()
}

/// Downloads `repo`'s config and safetensors weights (single or sharded) into the cache; resumes partial files.
pub fn download(repo: &str) -> Result<PathBuf, String> {
    let r = try_download(repo);
    if r.is_err() {
        // Leave no empty directories behind for a repository that could not be reached at all.
        let dir = repo_dir(repo);
        let _ = fs::remove_dir(dir.join("snapshots/main"));
        let _ = fs::remove_dir(dir.join("snapshots"));
        let _ = fs::remove_dir(&dir);
    }
    r
}

fn try_download(repo: &str) -> Result<PathBuf, String> {
    let base = endpoint();
    let snap = repo_dir(repo).join("snapshots").join("main");
    fs::create_dir_all(&snap).map_err(|e| format!("cannot create {}: {e}", snap.display()))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(15)))
        .build()
        .into();
    let url = |file: &str| format!("{base}/{repo}/resolve/main/{file}");
    fetch(&agent, &url("config.json"), &snap.join("config.json"))?;
    let mut files = Vec::new();
    match fetch(&agent, &url("model.safetensors.index.json"), &snap.join("model.safetensors.index.json")) {
        Ok(()) => {
            let index = fs::read_to_string(snap.join("model.safetensors.index.json")).map_err(|e| e.to_string())?;
            files.extend(shard_names(&index)?);
        }
        Err(e) if e.starts_with("404") => files.push("model.safetensors".to_string()),
        Err(e) => return Err(e),
    }
    for f in &files {
        fetch(&agent, &url(f), &snap.join(f))?;
    }
    let refs = repo_dir(repo).join("refs");
    fs::create_dir_all(&refs).map_err(|e| e.to_string())?;
    fs::write(refs.join("main"), "main").map_err(|e| e.to_string())?;
    Ok(snap)
}

/// GET `url` into `dest` through `dest.incomplete`, resuming with a Range request; renamed only when whole.
fn fetch(agent: &ureq::Agent, url: &str, dest: &Path) -> Result<(), String> {
    if dest.is_file() {
        return Ok(());
    }
    let part = dest.with_extension(format!("{}incomplete", dest.extension().map(|e| format!("{}.", e.to_string_lossy())).unwrap_or_default()));
    let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", &format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => true,
        200 => false,
        416 if have > 0 => true, // already complete
        404 => return Err(format!("404: {url} not found")),
        s => return Err(format!("{s}: {url}")),
    };
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| if append && status == 206 { n + have } else { n });
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&part)
        .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
    let start = if append { have } else { 0 };
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message(dest.file_name().unwrap().to_string_lossy().to_string());
    bar.set_position(start);
    if status != 416 {
        let mut body = resp.into_body();
        let mut reader = body.as_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| format!("download of {url} interrupted: {e} (run again to resume)"))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).map_err(|e| format!("cannot write {}: {e}", part.display()))?;
            bar.inc(n as u64);
        }
    }
    bar.finish_and_clear();
    let got = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if let Some(t) = total {
        if got != t {
            return Err(format!("download of {url} stopped at {got} of {t} bytes (run again to resume)"));
        }
    }
    fs::rename(&part, dest).map_err(|e| e.to_string())
}
