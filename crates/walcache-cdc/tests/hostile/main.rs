//! Hostile inputs for every decoder of walcache-cdc that reads what another party wrote:
//! pgoutput messages, the replication CopyData payloads, and connection strings. Each property
//! runs at least 10,000 cases (more with `PROPTEST_CASES`), in a child process with a capped
//! address space, and never needs a server. Fuzz targets for the same decoders are in `fuzz/`
//! at the repository root.
#![allow(missing_docs)]

mod conninfo;
mod copy_data;
use walcache_testkit::hostile as harness;
use walcache_testkit::hostile::mutate;
mod pgoutput;

#[test]
fn the_address_space_cap_catches_a_huge_allocation() {
    harness::assert_cap_bites(
        module_path!(),
        "the_address_space_cap_catches_a_huge_allocation",
    );
}
