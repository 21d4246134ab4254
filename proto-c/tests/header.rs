//! The checked-in header is what cbindgen makes of the crate now: a change to the C API that
//! was not regenerated fails here (and so in CI). `NSPROTO_BLESS=1` rewrites it.

#[test]
fn the_checked_in_header_is_what_cbindgen_generates() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config =
        cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = format!("{dir}/include/nsproto.h");
    if std::env::var_os("NSPROTO_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{path} is stale: regenerate it with NSPROTO_BLESS=1 cargo test -p proto-c --test header"
    );
}
