//! What a component's bytes say about where it came from: consumes a
//! component file's bytes, produces its `producers` custom sections (the
//! languages, tools and SDKs that built it), merged over the component and
//! the modules nested in it. Nothing here runs the component.

use std::collections::BTreeMap;

use serde::Serialize;
use wasmparser::{KnownCustom, Parser, Payload};

/// One field of the producers sections (`language`, `processed-by`,
/// `sdk`) with every name and version recorded under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Producer {
    /// The field.
    pub field: String,
    /// `(name, version)` pairs, without repeats, in the order first seen.
    pub values: Vec<(String, String)>,
}

/// The producers of a component and of every module inside it. A
/// malformed section is skipped: this is information, not a check.
pub fn producers(bytes: &[u8]) -> Vec<Producer> {
    let mut fields: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut python = false;
    for payload in Parser::new(0).parse_all(bytes) {
        if let Ok(Payload::ImportSection(imports)) = &payload {
            // componentize-py links CPython and its own runtime as shared
            // libraries; their producers sections name only the Rust and C
            // they are written in.
            python |= imports.clone().into_imports().flatten().any(|import| {
                import.module.starts_with("libpython3")
                    || import.module.starts_with("libcomponentize_py_runtime")
            });
        }
        let Ok(Payload::CustomSection(section)) = payload else {
            continue;
        };
        let KnownCustom::Producers(reader) = section.as_known() else {
            continue;
        };
        for field in reader.into_iter().flatten() {
            let values = fields.entry(field.name.to_string()).or_default();
            for value in field.values.into_iter().flatten() {
                let pair = (value.name.to_string(), value.version.to_string());
                if !values.contains(&pair) {
                    values.push(pair);
                }
            }
        }
    }
    if python {
        fields.insert("language".into(), vec![("Python".into(), String::new())]);
        let tools = fields.entry("processed-by".into()).or_default();
        let componentize = ("componentize-py".to_string(), String::new());
        if !tools.iter().any(|(name, _)| name == &componentize.0) {
            tools.insert(0, componentize);
        }
    }
    fields
        .into_iter()
        .map(|(field, values)| Producer { field, values })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_name_the_tools_that_built_them() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        let read = |name: &str| {
            std::fs::read(dist.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}: run `make plugins`"))
        };
        let has = |found: &[Producer], field: &str, name: &str| {
            found
                .iter()
                .any(|p| p.field == field && p.values.iter().any(|(n, _)| n == name))
        };
        // The guest profile strips rustc's own section; the bindings
        // generator and the component encoder still sign theirs.
        let rust = producers(&read("remap.wasm"));
        assert!(has(&rust, "processed-by", "wit-bindgen-rust"), "{rust:?}");
        assert!(has(&rust, "processed-by", "wit-component"), "{rust:?}");
        let python = producers(&read("remap-py.wasm"));
        assert!(has(&python, "language", "Python"), "{python:?}");
        assert!(!has(&python, "language", "Rust"), "{python:?}");
        let js = producers(&read("remap-js.wasm"));
        assert!(has(&js, "language", "JavaScript"), "{js:?}");
        assert!(has(&js, "processed-by", "ComponentizeJS"), "{js:?}");
        assert!(producers(b"not wasm").is_empty());
    }
}
