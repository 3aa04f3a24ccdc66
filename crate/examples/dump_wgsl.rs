//! Writes every generated shader of `kernels::catalog` to `<dir>/<family>/<variant>.wgsl`, so a generator change
//! that must keep its output can be checked byte for byte: dump before and after, then `diff -r before after`.
//!
//! `cargo run --release --example dump_wgsl -- <dir>`
fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: dump_wgsl <dir>");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    let shaders = dia_webgpu::kernels::catalog::generated_shaders();
    let mut bytes = 0;
    for (name, source) in &shaders {
        let path = dir.join(format!("{name}.wgsl"));
        let written = std::fs::create_dir_all(path.parent().expect("a name has a family folder")).and_then(|()| std::fs::write(&path, source));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        bytes += source.len();
    }
    println!("{} shaders, {bytes} bytes, in {}", shaders.len(), dir.display());
}
