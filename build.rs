//! Links the `gatehouse` binary with the functions that start-up and the `/mcp` hot path
//! run placed next to each other (`link/gatehouse.order`, written by `scripts/link-order`).
//!
//! Why: the kernel maps a binary's code in 64 KiB windows around each page it faults in.
//! Unordered, the ~2,300 functions a start runs are spread over 9 of the 12 MiB of code,
//! so an idle server held 9 MiB of it; packed together they take about 3.
//!
//! Only where rustc links with its bundled lld (x86_64 Linux with glibc, rustc 1.90 and
//! later) and no other linker is configured: GNU ld does not know the option. Names the
//! binary no longer has (after a dependency or toolchain change) are skipped, which costs
//! memory, never correctness. `GATEHOUSE_LINK_ORDER=0` turns it off.

use std::path::Path;
use std::process::Command;

const ORDER_FILE: &str = "link/gatehouse.order";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_LINK_ORDER");
    if std::env::var("GATEHOUSE_LINK_ORDER").is_ok_and(|v| v == "0") {
        return;
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&manifest_dir).join(ORDER_FILE);
    if order.is_file() && links_with_bundled_lld() {
        println!(
            "cargo:rustc-link-arg-bin=gatehouse=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=gatehouse=-Wl,--no-warn-symbol-ordering");
    }
}

fn links_with_bundled_lld() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let target = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // A linker chosen in Cargo's config (RUSTC_LINKER) or in the flags may not be lld.
    let custom_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("link");
    target && !custom_linker && rustc_minor().is_some_and(|minor| minor >= 90)
}

/// The `N` of rustc `1.N.x`.
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
