//! Kernel launches: dispatch parameters packed into shared uniform chunks, dispatches prepared once (bind group
//! and grid), and their recording into compute passes without repeated pipeline / bind-group calls.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{Gpu, GpuBuffer};

/// Parameters of dispatches are packed into shared uniform buffers of `PARAMS_CHUNK` bytes, one slot each at the
/// adapter's uniform offset alignment, instead of one buffer per dispatch: a generation builds several hundred
/// dispatches, and in a browser each buffer created costs a round trip (Dawn under Node on an H100: ~0.9 ms per
/// dispatch built, 140 ms of every generation's time to first audio). Chunks are kept and refilled once no
/// dispatch binds them (a refill is written through the queue, after the work that read the old values), so
/// after the first generation no chunk is allocated and memory stays flat.
#[derive(Default)]
pub(super) struct ParamsChunk {
    /// Every chunk kept; the one being filled is `chunks[current]`.
    pub(super) chunks: Vec<Arc<wgpu::Buffer>>,
    pub(super) current: usize,
    used: u64,
}

const PARAMS_CHUNK: u64 = 64 << 10;

impl Gpu {
    /// Bytes of the kept dispatch-parameter chunks: they grow to what the most dispatches alive at once needed, then
    /// stay (freed when idle by `release_reusable`).
    pub fn params_bytes(&self) -> u64 {
        self.params.lock().unwrap().chunks.len() as u64 * PARAMS_CHUNK
    }

    /// A slot holding `bytes` (zero-padded to a multiple of 16) in the current parameters chunk, or in a buffer of
    /// its own when larger than a quarter chunk: the buffer, the slot's offset and its size. Written through the
    /// queue, so ordered after work already submitted and before the next submit.
    fn params_slot(&self, bytes: &[u8]) -> (Arc<wgpu::Buffer>, u64, u64) {
        let size = (bytes.len() as u64).max(16).div_ceil(16) * 16;
        if size > PARAMS_CHUNK / 4 {
            return (self.uniform_bytes("params", bytes), 0, size);
        }
        let align = (self.limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let mut chunk = self.params.lock().unwrap();
        let mut start = chunk.used.next_multiple_of(align);
        if chunk.chunks.is_empty() || start + size > PARAMS_CHUNK {
            // A kept chunk that no dispatch binds any more (only this list holds it), else a new one.
            let current = chunk.current;
            let idle = (0..chunk.chunks.len()).find(|&i| i != current && Arc::strong_count(&chunk.chunks[i]) == 1);
            chunk.current = idle.unwrap_or_else(|| {
                chunk.chunks.push(self.track("params", self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: PARAMS_CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })));
                chunk.chunks.len() - 1
            });
            start = 0;
        }
        let buffer = chunk.chunks[chunk.current].clone();
        chunk.used = start + size;
        if bytes.len() as u64 == size {
            self.queue.write_buffer(&buffer, start, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            self.queue.write_buffer(&buffer, start, &padded);
        }
        (buffer, start, size)
    }

    fn uniform_bytes(&self, label: &str, bytes: &[u8]) -> Arc<wgpu::Buffer> {
        self.track(label, self.init_buffer(label, bytes, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST))
    }

    /// A uniform buffer of its own holding `params` (a `#[repr(C)]` Pod struct, 16-byte multiple).
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, params: &T) -> Arc<wgpu::Buffer> {
        self.uniform_bytes(label, bytemuck::bytes_of(params))
    }

    /// Builds a dispatch: binding 0 = a uniform with `params`, bindings 1.. = `buffers` in order.
    /// The bind group is made here, once; `Dispatch::record` only replays it.
    pub fn dispatch<T: bytemuck::Pod>(
        &self,
        pipeline: &Arc<wgpu::ComputePipeline>,
        params: &T,
        buffers: &[&GpuBuffer],
        workgroups: [u32; 3],
    ) -> Dispatch {
        if let Some(d) = self.discovery.lock().unwrap().as_ref() {
            // Discovery: the pipeline may not be compiled yet and the buffers are stand-ins; the dispatch only has to
            // exist (it records nothing).
            return Dispatch { pipeline: d.placeholder.clone(), bind_group: d.empty_group.clone(), workgroups: [0, 0, 0], _uniform: d.uniform.clone(), _bound: Vec::new() };
        }
        let (uniform, offset, size) = self.params_slot(bytemuck::bytes_of(params));
        let params_binding = wgpu::BufferBinding { buffer: &uniform, offset, size: wgpu::BufferSize::new(size) };
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(params_binding) }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch { pipeline: pipeline.clone(), bind_group, workgroups, _uniform: uniform, _bound: buffers.iter().map(|b| b.buf.clone()).collect() }
    }

    /// Records `dispatches` into one compute pass of a fresh encoder and submits it.
    pub fn run(&self, dispatches: &[&Dispatch]) {
        let mut enc = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        self.queue.submit([enc.finish()]);
    }
}

/// A kernel launch prepared once: pipeline, bind group (with its uniform parameters) and grid size.
pub struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: wgpu::BindGroup,
    workgroups: [u32; 3],
    /// The parameters' buffer (a shared chunk): held so that `allocated_bytes` counts it while the dispatch lives.
    _uniform: Arc<wgpu::Buffer>,
    /// The buffers the bind group binds. wgpu keeps them alive through the bind group anyway; holding them here
    /// too keeps the accounting true (`Gpu::allocated_bytes` counts a buffer while a dispatch binds it), keeps a
    /// `shared_scratch` buffer shared while dispatches that bind it exist, and keeps `reusable_buffer` from handing
    /// a buffer that live dispatches still write to another user.
    _bound: Vec<Arc<wgpu::Buffer>>,
}

impl Dispatch {
    /// Records the dispatch into `pass`, leaving out the `set_pipeline` / `set_bind_group` that would repeat what
    /// the previous dispatch recorded into the same pass set (in a browser each call is a trip through the WebGPU
    /// implementation; natively wgpu re-binds on each). Only `record` sets pipelines and bind groups on passes.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.workgroups.contains(&0) {
            return;
        }
        let (pass_key, pipeline_key, group_key) = (HandleKey::of(&*pass), HandleKey::of(&*self.pipeline), HandleKey::of(&self.bind_group));
        let (set_pipeline, set_group) = PASS_STATE.with_borrow_mut(|s| {
            if !pass_key.same(&s.pass) {
                *s = PassState { pass: pass_key, counts: s.counts, ..Default::default() };
            }
            let set_pipeline = !pipeline_key.same(&s.pipeline);
            let set_group = !group_key.same(&s.bind_group);
            s.pipeline = pipeline_key;
            s.bind_group = group_key;
            let c = &mut s.counts;
            if set_pipeline { c.pipelines_set += 1 } else { c.pipelines_skipped += 1 }
            if set_group { c.bind_groups_set += 1 } else { c.bind_groups_skipped += 1 }
            (set_pipeline, set_group)
        });
        if set_pipeline {
            pass.set_pipeline(&self.pipeline);
        }
        if set_group {
            pass.set_bind_group(0, &self.bind_group, &[]);
        }
        pass.dispatch_workgroups(self.workgroups[0], self.workgroups[1], self.workgroups[2]);
    }
}

/// `set_pipeline` / `set_bind_group` calls `Dispatch::record` made and left out as repeats, on this thread so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub pipelines_set: u64,
    pub pipelines_skipped: u64,
    pub bind_groups_set: u64,
    pub bind_groups_skipped: u64,
}

impl RecordCounts {
    /// The calls made between `earlier` (an older `record_counts()`) and these.
    pub fn since(self, earlier: RecordCounts) -> RecordCounts {
        RecordCounts {
            pipelines_set: self.pipelines_set - earlier.pipelines_set,
            pipelines_skipped: self.pipelines_skipped - earlier.pipelines_skipped,
            bind_groups_set: self.bind_groups_set - earlier.bind_groups_set,
            bind_groups_skipped: self.bind_groups_skipped - earlier.bind_groups_skipped,
        }
    }
}

/// This thread's `RecordCounts` (recording happens on the thread that builds the command buffer).
pub fn record_counts() -> RecordCounts {
    PASS_STATE.with_borrow(|s| s.counts)
}

/// What the last `Dispatch::record` on this thread left set, and in which pass.
#[derive(Default)]
struct PassState {
    pass: HandleKey,
    pipeline: HandleKey,
    bind_group: HandleKey,
    counts: RecordCounts,
}

thread_local! {
    static PASS_STATE: std::cell::RefCell<PassState> = std::cell::RefCell::new(PassState::default());
}

/// A wgpu handle's identity: the bytes its `Hash` writes. wgpu hashes a handle (pass, pipeline, bind group) by an id
/// unique to the object (a counter, or wgpu-core's index with its reuse epoch), so equal keys are the same object,
/// and a new pass never matches an ended one. Keys longer than the buffer compare as unknown (never the same).
#[derive(Clone, Copy, Default)]
struct HandleKey {
    bytes: [u8; 32],
    /// Bytes written; None: nothing written or too many (unknown).
    len: Option<usize>,
}

impl HandleKey {
    fn of<T: Hash + ?Sized>(handle: &T) -> HandleKey {
        let mut key = HandleKey { bytes: [0; 32], len: Some(0) };
        handle.hash(&mut key);
        if key.len == Some(0) {
            key.len = None;
        }
        key
    }

    fn same(&self, other: &HandleKey) -> bool {
        match (self.len, other.len) {
            (Some(a), Some(b)) => a == b && self.bytes[..a] == other.bytes[..b],
            _ => false,
        }
    }
}

impl Hasher for HandleKey {
    fn write(&mut self, bytes: &[u8]) {
        self.len = self.len.and_then(|n| {
            let end = n + bytes.len();
            (end <= self.bytes.len()).then(|| {
                self.bytes[n..end].copy_from_slice(bytes);
                end
            })
        });
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Splits a 1-D count of workgroups into a 2-D grid within the per-dimension limit (65535).
pub fn grid_1d(groups: u32) -> [u32; 3] {
    if groups <= 65535 {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y), y, 1]
    }
}
