//! Compiles the XDP program with clang (through libbpf-cargo) into
//! `$OUT_DIR/redirect.bpf.o`, which the crate embeds. Headers come from the
//! Debian packages `libbpf-dev` and `linux-libc-dev`; no vmlinux.h is needed.

use std::path::PathBuf;

fn main() {
    let src = "src/bpf/redirect.bpf.c";
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("redirect.bpf.o");
    // Debian keeps <asm/types.h> under the multiarch include directory.
    let multiarch = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    libbpf_cargo::SkeletonBuilder::new()
        .source(src)
        .obj(&out)
        .clang_args([multiarch.as_str(), "-Wall", "-Werror"])
        .build()
        .unwrap_or_else(|e| {
            panic!("compiling {src}: {e:#} (install clang and libbpf-dev: scripts/setup.sh)")
        });
    println!("cargo:rerun-if-changed={src}");
}
