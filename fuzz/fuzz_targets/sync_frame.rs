#![no_main]

libfuzzer_sys::fuzz_target!(init: concord_fuzz::init_libfuzzer(), |data: &[u8]| concord_fuzz::sync_frame(data));
