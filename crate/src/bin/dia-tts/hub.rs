//! Finding checkpoints: the standard Hugging Face cache first, then a download from the hub (or
//! `$HF_ENDPOINT`) with progress and resume, into that same cache and in its layout, so that
//! huggingface_hub, the `hf-hub` crate and transformers share what we download and we share theirs:
//!
//! ```text
//! models--{org}--{name}/blobs/{etag}                 contents; LFS files named by their SHA-256
//! models--{org}--{name}/snapshots/{commit}/{file}    relative symlink to ../../blobs/{etag}
//! models--{org}--{name}/refs/main                    the commit that `main` resolved to
//! ```
//!
//! Every file name that comes from the network (index shards, the commit, the etag) must be a plain
//! file name before it is requested or joined onto a path; LFS files are verified against their SHA-256
//! before they enter `blobs/`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

pub const DIA_REPO: &str = "nari-labs/Dia-1.6B-0626";
pub const DAC_REPO: &str = "descript/dac_44khz";

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Why a download could not give a usable checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{what} {name:?} is not a plain file name ({reason}); nothing was requested or written for it")]
    UnsafeName { repo: String, what: &'static str, name: String, reason: &'static str },
    #[error("bad {file}: {message}")]
    BadIndex { file: String, message: String },
    #[error("cannot reach {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("HTTP {status} for {url}")]
    Status { url: String, status: u16 },
    #[error("{url} answered without the {header} header (is HF_ENDPOINT a Hugging Face hub or mirror?)")]
    MissingHeader { url: String, header: &'static str },
    #[error("download of {url} stopped at {got} of {total} bytes (run again to resume)")]
    Incomplete { url: String, got: u64, total: u64 },
    #[error("{file}: the hub gives no SHA-256 for it (etag {etag:?}), so it cannot be verified")]
    Unverifiable { file: String, etag: String },
    #[error("{file}: the downloaded bytes have SHA-256 {actual}, the hub announced {expected}; the download was discarded")]
    Integrity { file: String, expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl HubError {
    /// The hub was unreachable or does not serve the repository (the caller may fall back to other
    /// weights), as opposed to a repository or cache that answered with something unsafe or corrupt.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, HubError::Unreachable { .. } | HubError::Status { .. } | HubError::MissingHeader { .. } | HubError::Incomplete { .. })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io { path: path.to_path_buf(), source }
}

/// Why `name` is not a plain file name that stays inside the directory it is joined onto (None if it is).
pub fn unsafe_name_reason(name: &str) -> Option<&'static str> {
    const WINDOWS_DEVICES: [&str; 22] = [
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9", "LPT1", "LPT2", "LPT3",
        "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    ];
    if name.is_empty() {
        return Some("empty");
    }
    if name == "." || name == ".." {
        return Some("a directory reference");
    }
    if name.contains(['/', '\\']) {
        return Some("it contains a path separator");
    }
    if name.contains(':') {
        return Some("it contains ':', a drive prefix or stream name on Windows");
    }
    if name.chars().any(char::is_control) {
        return Some("it contains a control character");
    }
    if name.len() > 255 {
        return Some("longer than 255 bytes");
    }
    if name.ends_with(['.', ' ']) {
        return Some("it ends with a dot or a space, which Windows drops");
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end();
    if WINDOWS_DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem)) {
        return Some("a reserved device name on Windows");
    }
    // Whatever the rules above missed, the platform's own parser must see a single ordinary component.
    let mut parts = Path::new(name).components();
    if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) {
        return Some("not a single path component");
    }
    None
}

fn plain_name(repo: &str, what: &'static str, name: &str) -> Result<(), HubError> {
    match unsafe_name_reason(name) {
        Some(reason) => Err(HubError::UnsafeName { repo: repo.to_string(), what, name: name.to_string(), reason }),
        None => Ok(()),
    }
}

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
    if !dir.join(CONFIG).is_file() {
        return false;
    }
    if dir.join(SINGLE).is_file() {
        return true;
    }
    match fs::read_to_string(dir.join(INDEX)) {
        Ok(s) => shard_names(&s).map(|names| names.iter().all(|n| unsafe_name_reason(n).is_none() && dir.join(n).is_file())).unwrap_or(false),
        Err(_) => false,
    }
}

/// The distinct shard files an index's `weight_map` names, sorted.
fn shard_names(index_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(index_json).map_err(|e| format!("not JSON: {e}"))?;
    let map = v["weight_map"].as_object().ok_or("no weight_map object")?;
    let mut names = Vec::new();
    for (tensor, file) in map {
        names.push(file.as_str().ok_or_else(|| format!("the file of {tensor:?} is not a string"))?.to_string());
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err("the weight_map is empty".into());
    }
    Ok(names)
}

/// The cached snapshot of `repo` if complete: the one `refs/main` names (a commit hash as huggingface_hub
/// writes it, or `main` from our earlier versions), else any complete snapshot.
pub fn find_cached(repo: &str) -> Option<PathBuf> {
    let dir = repo_dir(repo);
    if let Ok(r) = fs::read_to_string(dir.join("refs/main")) {
        let r = r.trim();
        if unsafe_name_reason(r).is_none() {
            let snap = dir.join("snapshots").join(r);
            if is_complete(&snap) {
                return Some(snap);
            }
        }
    }
    fs::read_dir(dir.join("snapshots")).ok()?.flatten().map(|e| e.path()).find(|p| is_complete(p))
}

pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string()).trim_end_matches('/').to_string()
}

/// Downloads `repo`'s config and safetensors weights (single or sharded) into the cache; resumes partial
/// files. Returns the snapshot directory.
pub fn download(repo: &str) -> Result<PathBuf, HubError> {
    let dir = repo_dir(repo);
    let existed = dir.exists();
    let r = Download::new(repo).run();
    if r.is_err() && !existed {
        // Leave no empty directories behind for a repository that gave nothing usable.
        for d in ["blobs", "snapshots", "refs", ""] {
            let _ = fs::remove_dir(dir.join(d));
        }
    }
    r
}

/// What the hub says about one file of a revision (huggingface_hub reads the same headers).
struct Remote {
    /// `X-Repo-Commit`: the commit the revision resolved to.
    commit: String,
    /// `X-Linked-Etag` (LFS) or `ETag`, unquoted: the blob's name in the cache.
    etag: String,
    /// `X-Linked-Size` or `Content-Length`.
    size: Option<u64>,
}

impl Remote {
    /// The SHA-256 an etag of 64 hex digits is (the hub's etag of every LFS file).
    fn sha256(&self) -> Option<&str> {
        (self.etag.len() == 64 && self.etag.bytes().all(|b| b.is_ascii_hexdigit())).then_some(&self.etag)
    }
}

/// Characters escaped in a URL path segment: all but the unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

struct Download<'a> {
    repo: &'a str,
    base: String,
    dir: PathBuf,
    agent: ureq::Agent,
}

impl<'a> Download<'a> {
    fn new(repo: &'a str) -> Download<'a> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(std::time::Duration::from_secs(15)))
            .build()
            .into();
        Download { repo, base: endpoint(), dir: repo_dir(repo), agent }
    }

    fn url(&self, revision: &str, file: &str) -> String {
        let (rev, file) = (utf8_percent_encode(revision, SEGMENT), utf8_percent_encode(file, SEGMENT));
        format!("{}/{}/resolve/{rev}/{file}", self.base, self.repo)
    }

    fn run(&self) -> Result<PathBuf, HubError> {
        // `main` resolves to a commit; every other file is asked for at that commit, so all come from one.
        let config = self.head("main", CONFIG)?.ok_or_else(|| HubError::Status { url: self.url("main", CONFIG), status: 404 })?;
        let commit = config.commit.clone();
        plain_name(self.repo, "commit", &commit)?;
        let mut files = vec![(CONFIG.to_string(), self.fetch(&commit, CONFIG, &config, false)?)];
        match self.head(&commit, INDEX)? {
            None => {
                let remote = self.head(&commit, SINGLE)?.ok_or_else(|| HubError::Status { url: self.url(&commit, SINGLE), status: 404 })?;
                files.push((SINGLE.to_string(), self.fetch(&commit, SINGLE, &remote, true)?));
            }
            Some(index) => {
                let blob = self.fetch(&commit, INDEX, &index, false)?;
                let shards = fs::read_to_string(&blob)
                    .map_err(|e| e.to_string())
                    .and_then(|s| shard_names(&s))
                    .map_err(|message| HubError::BadIndex { file: INDEX.into(), message });
                // Every shard name is checked before the first shard is requested; a bad index is not kept.
                let shards = shards.and_then(|s| s.iter().try_for_each(|n| plain_name(self.repo, "shard", n)).map(|()| s));
                let shards = shards.inspect_err(|_| {
                    let _ = fs::remove_file(&blob);
                })?;
                files.push((INDEX.to_string(), blob));
                for shard in shards {
                    let remote = self.head(&commit, &shard)?.ok_or_else(|| HubError::Status { url: self.url(&commit, &shard), status: 404 })?;
                    let blob = self.fetch(&commit, &shard, &remote, true)?;
                    files.push((shard, blob));
                }
            }
        }
        // The snapshot links appear only once every blob is there and verified; refs/main last of all.
        let snap = self.dir.join("snapshots").join(&commit);
        fs::create_dir_all(&snap).map_err(io(&snap))?;
        for (file, blob) in &files {
            link_into_snapshot(blob, &snap.join(file))?;
        }
        write_replacing(&self.dir.join("refs/main"), commit.as_bytes())?;
        Ok(snap)
    }

    /// HEAD `file` at `revision` without following redirects to another host, as huggingface_hub does: the
    /// hub answers LFS files with a 302 to a CDN, and the commit and etag headers are on that 302. `None`
    /// when the file does not exist.
    fn head(&self, revision: &str, file: &str) -> Result<Option<Remote>, HubError> {
        let mut url = self.url(revision, file);
        for _ in 0..5 {
            let resp = self
                .agent
                .head(&url)
                .config()
                .max_redirects(0)
                .build()
                .call()
                .map_err(|e| HubError::Unreachable { url: url.clone(), message: e.to_string() })?;
            let status = resp.status().as_u16();
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
            if resp.status().is_redirection() {
                // A relative Location is the hub itself (a renamed repository): follow it.
                if let Some(loc) = header("location").filter(|l| l.starts_with('/') && !l.starts_with("//")) {
                    url = format!("{}{loc}", origin(&self.base));
                    continue;
                }
            } else if status == 404 {
                return Ok(None);
            } else if !resp.status().is_success() {
                return Err(HubError::Status { url, status });
            }
            let missing = |header| HubError::MissingHeader { url: url.clone(), header };
            let commit = header("x-repo-commit").ok_or_else(|| missing("X-Repo-Commit"))?.to_string();
            let etag = header("x-linked-etag").or_else(|| header("etag")).ok_or_else(|| missing("ETag"))?;
            let etag = etag.trim_start_matches("W/").trim_matches('"').to_string();
            plain_name(self.repo, "etag", &etag)?;
            // A redirect's Content-Length is that of its own (empty) body.
            let length = if resp.status().is_redirection() { None } else { header("content-length") };
            let size = header("x-linked-size").or(length).and_then(|v| v.parse().ok());
            return Ok(Some(Remote { commit, etag, size }));
        }
        Err(HubError::Unreachable { url, message: "too many redirects".into() })
    }

    /// `blobs/{etag}` for `file`, downloaded through `blobs/{etag}.incomplete` (resumed with a Range request)
    /// if not already there, its SHA-256 checked when the etag is one. `must_verify`: refuse files without one.
    fn fetch(&self, revision: &str, file: &str, remote: &Remote, must_verify: bool) -> Result<PathBuf, HubError> {
        let sha256 = remote.sha256();
        if must_verify && sha256.is_none() {
            return Err(HubError::Unverifiable { file: file.into(), etag: remote.etag.clone() });
        }
        let blobs = self.dir.join("blobs");
        let blob = blobs.join(&remote.etag);
        if blob.is_file() {
            return Ok(blob); // verified when it was written
        }
        fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let part = blobs.join(format!("{}.incomplete", remote.etag));
        let url = self.url(revision, file);
        let mut have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if remote.size.is_some_and(|size| have > size) {
            have = 0; // not a prefix of this file
        }
        let mut hasher = Sha256::new();
        if have > 0 && sha256.is_some() {
            let mut f = fs::File::open(&part).map_err(io(&part))?.take(have);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).map_err(io(&part))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        let total = if remote.size == Some(have) && have > 0 {
            Some(have) // the previous run got every byte and stopped before the rename
        } else {
            self.get_into(&url, file, &part, have, remote.size, &mut hasher)?
        };
        let got = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if let Some(total) = total.filter(|&t| t != got) {
            return Err(HubError::Incomplete { url, got, total });
        }
        if let Some(expected) = sha256 {
            let actual: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if !actual.eq_ignore_ascii_case(expected) {
                let _ = fs::remove_file(&part);
                return Err(HubError::Integrity { file: file.into(), expected: expected.to_string(), actual });
            }
        }
        fs::rename(&part, &blob).map_err(io(&blob))?;
        Ok(blob)
    }

    /// GET `url` (redirects followed) into `part`, from byte `have` on when the server honours the Range;
    /// feeds every byte written to `hasher`. Returns the file's expected size when known.
    fn get_into(&self, url: &str, file: &str, part: &Path, have: u64, size: Option<u64>, hasher: &mut Sha256) -> Result<Option<u64>, HubError> {
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", &format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| HubError::Unreachable { url: url.to_string(), message: e.to_string() })?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let start = match status {
            206 if have > 0 => {
                // The range must start where the partial file ends.
                let from = header("content-range").and_then(|r| r.strip_prefix("bytes ")?.split('-').next()?.trim().parse::<u64>().ok());
                if from.is_some_and(|f| f != have) {
                    return Err(HubError::Unreachable { url: url.into(), message: format!("asked for bytes from {have}, got a range from {}", from.unwrap()) });
                }
                have
            }
            200 => {
                *hasher = Sha256::new(); // a whole file: start again
                0
            }
            // Nothing after byte `have`: the partial file is whole (its size and hash are checked next).
            416 if have > 0 => return Ok(size.or(Some(have))),
            s => return Err(HubError::Status { url: url.into(), status: s }),
        };
        let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let total = size.or(length.map(|n| n + start));
        let mut out = fs::OpenOptions::new().create(true).write(true).append(start > 0).truncate(start == 0).open(part).map_err(io(part))?;
        let bar = ProgressBar::new(total.unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        bar.set_message(file.to_string());
        bar.set_position(start);
        let mut body = resp.into_body();
        let mut reader = body.as_reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| HubError::Unreachable { url: url.into(), message: format!("download interrupted: {e} (run again to resume)") })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io(part))?;
            hasher.update(&buf[..n]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        Ok(total)
    }
}

/// `scheme://host[:port]` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// `link` → `../../blobs/{etag}` (relative, as huggingface_hub makes them), replacing what was there.
/// Where symlinks are not allowed, a hard link or a copy of the blob.
fn link_into_snapshot(blob: &Path, link: &Path) -> Result<(), HubError> {
    let target = Path::new("../../blobs").join(blob.file_name().expect("a blob has a file name"));
    let tmp = link.with_file_name(format!(".{}.link", link.file_name().unwrap().to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, &tmp);
    #[cfg(windows)]
    let made = std::os::windows::fs::symlink_file(&target, &tmp);
    #[cfg(not(any(unix, windows)))]
    let made: std::io::Result<()> = Err(std::io::ErrorKind::Unsupported.into());
    if made.is_err() {
        fs::hard_link(blob, &tmp).or_else(|_| fs::copy(blob, &tmp).map(|_| ())).map_err(io(&tmp))?;
    }
    fs::rename(&tmp, link).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        HubError::Io { path: link.to_path_buf(), source: e }
    })
}

/// Writes `path` through a temporary file and a rename.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    let dir = path.parent().expect("a file in a directory");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names() {
        for ok in ["model.safetensors", "model-00001-of-00002.safetensors", "a..b", ".gitattributes", "weights v2.bin"] {
            assert_eq!(unsafe_name_reason(ok), None, "{ok}");
        }
        for bad in
            ["", ".", "..", "../x", "../../x", "/abs/x", "sub/dir", "..\\x", "C:x", "C:\\x", "a\0b", "a\nb", "x.", "x ", "NUL", "con.txt", "Lpt1.safetensors"]
        {
            assert!(unsafe_name_reason(bad).is_some(), "{bad:?} accepted");
        }
        assert!(unsafe_name_reason(&"a".repeat(256)).is_some());
    }

    #[test]
    fn origin_of_endpoints() {
        assert_eq!(origin("https://huggingface.co"), "https://huggingface.co");
        assert_eq!(origin("http://127.0.0.1:8080/mirror/path"), "http://127.0.0.1:8080");
    }
}
