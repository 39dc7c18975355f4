#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sixfold_node::fuzz::append_wire(data));
