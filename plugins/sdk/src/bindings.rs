//! The `wit-bindgen` output for the `refill:transform/transformer` world, and
//! nothing else.

wit_bindgen::generate!({
    world: "transformer",
    path: "../../wit",
    pub_export_macro: true,
    export_macro_name: "__export_transformer",
    default_bindings_module: "refill_sdk::bindings",
    additional_derives: [PartialEq],
});
