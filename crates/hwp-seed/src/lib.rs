//! Test-only crate: the HWP seed contract as a seed-only client would see it.
//! The tests of the `hodei` crate use it to call the four seed RPCs against a
//! real server; this crate's own tests check that `hwp-proto`'s proto keeps
//! every seed message, field and RPC unchanged.

/// Messages and client generated from the seed proto alone.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hwp");
}
