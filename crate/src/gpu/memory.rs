//! GPU memory: buffers (plain, uploaded, shared scratch, reusable between generations) and the accounting of what
//! they hold (live bytes, the peak, per-group breakdowns).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::Gpu;

/// Bytes held by the live buffers of `buffer`/`upload`/`uniform`. Each buffer is registered with a weak
/// handle and its bytes are given back once its last handle is gone (noticed at the next allocation or
/// query, so the peak taken at each allocation is exact). Bytes are also kept per allocation group (the buffer's
/// label with its numeric path parts folded, `fold_label`), and the groups' bytes at the peak are kept with it.
#[derive(Default)]
pub(super) struct Allocations {
    /// (buffer, bytes, group index).
    live: Vec<(Weak<wgpu::Buffer>, u64, usize)>,
    bytes: u64,
    peak: u64,
    /// Group names and their index in `group_bytes` / `peak_groups`.
    groups: Vec<String>,
    group_index: HashMap<String, usize>,
    /// Bytes and live buffers per group now.
    group_bytes: Vec<(u64, u64)>,
    /// `group_bytes` when `peak` was reached.
    peak_groups: Vec<(u64, u64)>,
}

impl Allocations {
    fn sweep(&mut self) {
        let (bytes, groups) = (&mut self.bytes, &mut self.group_bytes);
        self.live.retain(|&(ref buf, size, group)| {
            let alive = buf.strong_count() > 0;
            if !alive {
                *bytes -= size;
                groups[group].0 -= size;
                groups[group].1 -= 1;
            }
            alive
        });
    }

    fn add(&mut self, buf: Weak<wgpu::Buffer>, size: u64, label: &str) {
        let name = fold_label(label);
        let group = match self.group_index.get(&name) {
            Some(&g) => g,
            None => {
                self.groups.push(name.clone());
                self.group_bytes.push((0, 0));
                self.group_index.insert(name, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        self.live.push((buf, size, group));
        self.bytes += size;
        self.group_bytes[group].0 += size;
        self.group_bytes[group].1 += 1;
        if self.bytes > self.peak {
            self.peak = self.bytes;
            self.peak_groups.clone_from(&self.group_bytes);
        }
    }

    fn mark_peak(&mut self) {
        self.peak = self.bytes;
        self.peak_groups.clone_from(&self.group_bytes);
    }

    /// Non-empty groups of `by_group` (indexed like `groups`), largest first.
    fn breakdown(&self, by_group: &[(u64, u64)]) -> Vec<AllocationGroup> {
        let mut out: Vec<AllocationGroup> = by_group
            .iter()
            .enumerate()
            .filter(|(_, &(bytes, _))| bytes > 0)
            .map(|(g, &(bytes, buffers))| AllocationGroup { label: self.groups[g].clone(), bytes, buffers })
            .collect();
        out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.label.cmp(&b.label)));
        out
    }
}

/// Buffers of one allocation group (`Gpu::peak_breakdown`): every buffer whose label folds to `label`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AllocationGroup {
    pub label: String,
    pub bytes: u64,
    pub buffers: u64,
}

/// A buffer label with every purely numeric dot-separated part replaced by `*` ("kv_k.12" → "kv_k.*",
/// "model.decoder.layers.3.mlp.down_proj.weight" → "model.decoder.layers.*.mlp.down_proj.weight"), so that
/// per-layer buffers count as one group while "conv1" and "conv2" stay apart.
pub fn fold_label(label: &str) -> String {
    label.split('.').map(|part| if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) { "*" } else { part }).collect::<Vec<_>>().join(".")
}

impl Gpu {
    /// Bytes of GPU memory held now by buffers made through `buffer`, `upload` and `uniform` (sizes as
    /// allocated, 16-byte padding included; readback staging buffers are not counted).
    pub fn allocated_bytes(&self) -> u64 {
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.bytes
    }

    /// The most `allocated_bytes` has been since the device was made or `reset_peak_allocated`.
    pub fn peak_allocated_bytes(&self) -> u64 {
        self.allocations.lock().unwrap().peak
    }

    /// Starts a new peak measurement from what is allocated now.
    pub fn reset_peak_allocated(&self) {
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.mark_peak();
    }

    /// What `allocated_bytes` was made of when it reached `peak_allocated_bytes`: bytes and buffers per allocation
    /// group (labels folded by `fold_label`), largest first. Their bytes sum to the peak.
    pub fn peak_breakdown(&self) -> Vec<AllocationGroup> {
        let a = self.allocations.lock().unwrap();
        a.breakdown(&a.peak_groups)
    }

    /// What `allocated_bytes` is made of now, as `peak_breakdown`.
    pub fn allocated_breakdown(&self) -> Vec<AllocationGroup> {
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.breakdown(&a.group_bytes)
    }

    pub(super) fn track(&self, label: &str, buf: wgpu::Buffer) -> Arc<wgpu::Buffer> {
        let size = buf.size();
        let buf = Arc::new(buf);
        let mut a = self.allocations.lock().unwrap();
        a.sweep();
        a.add(Arc::downgrade(&buf), size, label);
        buf
    }

    /// A zero-initialised storage buffer of `bytes` (rounded up to 16) usable as kernel input/output and copy source.
    pub fn buffer(&self, label: &str, bytes: u64) -> GpuBuffer {
        if let Some(b) = self.stand_in(bytes) {
            return b;
        }
        let size = bytes.max(16).div_ceil(16) * 16;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        GpuBuffer { buf: self.track(label, buf), offset: 0, size: bytes.max(4) }
    }

    /// A scratch buffer of at least `bytes` for `key`, shared with every earlier caller of the same key whose
    /// buffer is still alive (a larger request gets a new buffer). Only for data that a kernel writes and reads
    /// back within consecutive dispatches: the queue runs dispatches in order, so sharers never overlap.
    pub fn shared_scratch(&self, key: &str, bytes: u64) -> GpuBuffer {
        if let Some(b) = self.stand_in(bytes) {
            return b;
        }
        let mut pool = self.scratch.lock().unwrap();
        if let Some(buf) = pool.get(key).and_then(|w| w.upgrade()) {
            if buf.size() >= bytes {
                return GpuBuffer { buf, offset: 0, size: bytes.max(4) };
            }
        }
        let fresh = self.buffer(key, bytes);
        pool.insert(key.to_string(), Arc::downgrade(&fresh.buf));
        fresh
    }

    /// A storage buffer of at least `bytes` for `label` that nobody else holds, kept by the `Gpu` after its
    /// users drop it and handed to the next caller of the same label: per-generation working memory (KV
    /// caches, codec activations) without a device allocation each time (an allocation costs the driver's time on
    /// the host, per request: docs/performance.md). Contents are stale, not zero: only for buffers every reader finds
    /// written first. Idle buffers of the label too small for the request are freed; `release_reusable`
    /// frees every idle one.
    pub fn reusable_buffer(&self, label: &str, bytes: u64) -> GpuBuffer {
        if let Some(b) = self.stand_in(bytes) {
            return b;
        }
        let mut pool = self.reusable.lock().unwrap();
        let list = pool.entry(label.to_string()).or_default();
        // Only the pool holds an idle buffer; clones are made under this lock, so the count cannot rise meanwhile.
        let idle = |b: &Arc<wgpu::Buffer>| Arc::strong_count(b) == 1;
        if let Some(b) = list.iter().filter(|b| idle(b) && b.size() >= bytes).min_by_key(|b| b.size()) {
            return GpuBuffer { buf: b.clone(), offset: 0, size: bytes.max(4) };
        }
        list.retain(|b| !idle(b));
        let fresh = self.buffer(label, bytes);
        list.push(fresh.buf.clone());
        fresh
    }

    /// Frees the idle buffers `reusable_buffer` keeps for `labels` (those in use stay, and stay pooled).
    pub fn release_reusable_labels(&self, labels: &[&str]) {
        let mut pool = self.reusable.lock().unwrap();
        for label in labels {
            if let Some(list) = pool.get_mut(*label) {
                list.retain(|b| Arc::strong_count(b) > 1);
                if list.is_empty() {
                    pool.remove(*label);
                }
            }
        }
    }

    /// Frees the idle buffers `reusable_buffer` keeps, and the parameter chunks no dispatch binds.
    pub fn release_reusable(&self) {
        let mut pool = self.reusable.lock().unwrap();
        for list in pool.values_mut() {
            list.retain(|b| Arc::strong_count(b) > 1);
        }
        pool.retain(|_, l| !l.is_empty());
        // Parameter chunks too, but the one being filled.
        let mut params = self.params.lock().unwrap();
        if let Some(current) = params.chunks.get(params.current).cloned() {
            params.chunks.retain(|b| Arc::ptr_eq(b, &current) || Arc::strong_count(b) > 1);
            params.current = params.chunks.iter().position(|b| Arc::ptr_eq(b, &current)).unwrap_or(0);
        }
    }

    /// A storage buffer initialised with `data`.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> GpuBuffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let size = bytes.len() as u64;
        if let Some(b) = self.stand_in(size) {
            return b;
        }
        if size == 0 {
            return self.buffer(label, 4);
        }
        let buf = self.init_buffer(label, bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST);
        GpuBuffer { buf: self.track(label, buf), offset: 0, size }
    }

    /// A buffer of `bytes` rounded up to 16 (zero padding) holding `bytes`, written while mapped at creation.
    /// Unlike wgpu's `create_buffer_init`, which panics when the mapping fails, a lost device (the only cause
    /// here) leaves the buffer unwritten: it is invalid anyway, and the loss is reported at the next check.
    pub(super) fn init_buffer(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).max(16).div_ceil(16) * 16,
            usage,
            mapped_at_creation: true,
        });
        if let Ok(mut view) = buf.get_mapped_range_mut(..) {
            // Mapped-at-creation memory starts zeroed: only the data needs writing.
            view.slice(..bytes.len()).copy_from_slice(bytes);
            drop(view);
            buf.unmap();
        }
        buf
    }

    /// Writes `data` into `dst` at its offset (ordered before the next submit).
    pub fn write<T: bytemuck::Pod>(&self, dst: &GpuBuffer, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        debug_assert!(bytes.len() as u64 <= dst.size);
        if !bytes.is_empty() && !self.discovering() {
            self.queue.write_buffer(&dst.buf, dst.offset, bytes);
        }
    }
}

/// A byte range of a GPU buffer (offset and size in bytes; offset 256-aligned when bound).
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    pub buf: Arc<wgpu::Buffer>,
    pub offset: u64,
    pub size: u64,
}

impl GpuBuffer {
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.size.div_ceil(4) * 4),
        })
    }

    /// A sub-range; `offset` must respect the adapter's storage offset alignment (256) if bound.
    pub fn slice(&self, offset: u64, size: u64) -> GpuBuffer {
        assert!(offset + size <= self.size, "slice out of range");
        GpuBuffer { buf: self.buf.clone(), offset: self.offset + offset, size }
    }

    /// Number of f32/u32 elements in the range.
    pub fn len_words(&self) -> usize {
        (self.size / 4) as usize
    }
}
