//! Builds the variadic exec wrappers (execl, execlp, execle), which stable Rust cannot define.

fn main() {
    println!("cargo:rerun-if-changed=src/variadic.c");
    cc::Build::new().file("src/variadic.c").flag_if_supported("-fvisibility=default").compile("s3dlio_variadic");
}
