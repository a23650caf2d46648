//! Compiles the BPF programs with clang (through libbpf-cargo) into
//! `$OUT_DIR/redirect.bpf.o` (XDP) and `$OUT_DIR/exit.bpf.o` (the exit
//! watch), which the crate embeds. Headers come from the
//! Debian packages `libbpf-dev` and `linux-libc-dev`; no vmlinux.h is needed.

use std::path::PathBuf;

fn main() {
    // Debian keeps <asm/types.h> under the multiarch include directory.
    let multiarch = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in ["redirect", "exit"] {
        let src = format!("src/bpf/{name}.bpf.c");
        libbpf_cargo::SkeletonBuilder::new()
            .source(&src)
            .obj(out_dir.join(format!("{name}.bpf.o")))
            .clang_args([multiarch.as_str(), "-Wall", "-Werror"])
            .build()
            .unwrap_or_else(|e| {
                panic!("compiling {src}: {e:#} (install clang and libbpf-dev: scripts/setup.sh)")
            });
        println!("cargo:rerun-if-changed={src}");
    }
}
