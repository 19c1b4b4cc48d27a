//! The fuzz targets' checks, as a library for the libFuzzer binaries in fuzz_targets/.
pub mod checks;
