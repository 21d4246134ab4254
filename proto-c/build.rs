//! The shared library's soname carries the ABI version: `libnsproto.so.1`. A program linked
//! against it records that name and is refused by a later, incompatible `libnsproto.so.2`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnsproto.so.1");
}
