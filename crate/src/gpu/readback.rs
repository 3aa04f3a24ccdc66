//! Results back to the CPU and waits on the GPU: buffer readback, waiting for a submission or for idle, and
//! telling a lost device from another failure.

use std::sync::atomic::Ordering;

use super::{Gpu, GpuBuffer, GpuError};

impl Gpu {
    /// What a failed GPU operation (a readback, a wait) means: `DeviceLost` if the device is lost — the operations
    /// it ends fail a moment before the loss is reported, so this lets the report arrive (natively a wait for the
    /// queue, in the browser up to `LOSS_REPORT_WAIT_MS`) — else `failure`.
    pub async fn lost_or(&self, failure: GpuError) -> GpuError {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        #[cfg(target_arch = "wasm32")]
        for _ in 0..LOSS_REPORT_WAIT_MS / 10 {
            if self.lost.lock().unwrap().is_some() {
                break;
            }
            sleep_ms(10).await;
        }
        match self.check_lost() {
            Err(lost) => lost,
            Ok(()) => failure,
        }
    }

    /// How many times the CPU has waited on the GPU so far.
    pub fn wait_count(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Reads `src` back to the CPU (one wait).
    pub async fn read_bytes(&self, src: &GpuBuffer) -> Result<Vec<u8>, GpuError> {
        let size = src.size.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&src.buf, src.offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let data = map_read(self, &staging, 0, size).await?;
        Ok(data[..src.size as usize].to_vec())
    }

    pub async fn read_f32(&self, src: &GpuBuffer) -> Result<Vec<f32>, GpuError> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(src).await?))
    }

    pub async fn read_u32(&self, src: &GpuBuffer) -> Result<Vec<u32>, GpuError> {
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(src).await?))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, src: &GpuBuffer) -> Result<Vec<f32>, GpuError> {
        pollster::block_on(self.read_f32(src))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32_blocking(&self, src: &GpuBuffer) -> Result<Vec<u32>, GpuError> {
        pollster::block_on(self.read_u32(src))
    }

    /// Blocks until the submission `index` is done (natively; counts as a wait). Unlike `wait_idle`, the work
    /// submitted after it keeps the GPU busy meanwhile.
    pub fn wait_for(&self, index: wgpu::SubmissionIndex) -> Result<(), GpuError> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map(|_| ())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))
    }

    /// Lets the device make progress without blocking (native); a no-op on the web.
    pub fn poll_nonblocking(&self) {
        let _ = self.device.poll(wgpu::PollType::Poll);
    }

    /// Blocks until all submitted work is done (counts as a wait).
    pub fn wait_idle(&self) -> Result<(), GpuError> {
        self.waits.fetch_add(1, Ordering::Relaxed);
        // Writes queued since the last submit (dispatch parameters) go with an empty submit, so that they too are
        // done and their staging memory freed when this returns.
        self.queue.submit([]);
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::DeviceLost(e.to_string()))
    }
}

/// Maps `staging[offset..offset+size]` for reading and copies it out (counts as one wait).
pub async fn map_read(gpu: &Gpu, staging: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>, GpuError> {
    gpu.waits.fetch_add(1, Ordering::Relaxed);
    let slice = staging.slice(offset..offset + size);
    let (tx, rx) = futures::channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    #[cfg(not(target_arch = "wasm32"))]
    if let Err(e) = gpu.device.poll(wgpu::PollType::wait_indefinitely()) {
        return Err(gpu.lost_or(GpuError::Readback(format!("waiting for the GPU: {e}"))).await);
    }
    let mapped = match rx.await {
        Ok(r) => r.map_err(|e| GpuError::Readback(e.to_string())),
        Err(_) => Err(GpuError::Readback("map callback dropped".into())),
    };
    let data = mapped.and_then(|()| Ok(slice.get_mapped_range().map_err(|e| GpuError::Readback(e.to_string()))?.to_vec()));
    let data = match data {
        Ok(d) => d,
        Err(e) => return Err(gpu.lost_or(e).await),
    };
    staging.unmap();
    gpu.check()?;
    Ok(data)
}

/// How long `Gpu::lost_or` waits in the browser for `GPUDevice.lost` to settle after an operation failed.
#[cfg(target_arch = "wasm32")]
const LOSS_REPORT_WAIT_MS: u32 = 1000;

/// Resolves after `ms` milliseconds (`setTimeout` of the window or worker), letting the browser's tasks run.
#[cfg(target_arch = "wasm32")]
async fn sleep_ms(ms: u32) {
    use wasm_bindgen::JsCast;
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let global = js_sys::global();
        let set_timeout = js_sys::Reflect::get(&global, &"setTimeout".into()).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok());
        match set_timeout {
            Some(f) => {
                let _ = f.call2(&global, &resolve, &ms.into());
            }
            None => {
                let _ = resolve.call0(&wasm_bindgen::JsValue::UNDEFINED);
            }
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
