//! The `bindgen!` output for the `refill:transform/transformer` world, and
//! nothing else.

#![allow(
    missing_docs,
    reason = "generated code; the WIT file documents every item"
)]

wasmtime::component::bindgen!({
    world: "transformer",
    path: "../wit",
    additional_derives: [PartialEq],
});
