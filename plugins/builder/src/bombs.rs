//! Hostile variants of a Rust plugin that attack the host while they are
//! being instantiated, which no Rust source can express: extra core
//! instances whose memories and funcref tables are created at their full
//! size and touched by a start function.
//!
//! A crate lists them in its `Cargo.toml`:
//!
//! ```toml
//! [[package.metadata.refill.bomb]]
//! name = "evil-table-bomb"   # plugins/dist/evil-table-bomb.wasm
//! instances = 1              # core instances of the bomb module
//! tables = 100               # funcref tables in each (at most 100)
//! elements = 1000000         # elements in each table
//! memory_pages = 0           # 64 KiB pages of one memory in each (optional)
//! ```
//!
//! The variant is the crate's component with the bomb module appended and
//! instantiated `instances` times. The crate's own exports are untouched, so
//! the host accepts the component as a transform and meets the bomb when it
//! instantiates it.

use anyhow::{Context, Result, bail};
use wasm_encoder::{
    CodeSection, Component, ElementSection, Elements, Function, FunctionSection, InstanceSection,
    MemArg, MemoryType, Module, ModuleArg, ModuleSection, RawSection, RefType, StartSection,
    TableSection, TableType, TypeSection, ValType,
};

/// One bomb variant of a crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bomb {
    /// The variant's plugin name.
    pub name: String,
    /// Core instances of the bomb module.
    pub instances: u32,
    /// Funcref tables per instance.
    pub tables: u32,
    /// Elements per table.
    pub elements: u32,
    /// Pages of the memory of each instance (none when 0).
    pub memory_pages: u32,
}

/// The bombs a crate's `[package.metadata.refill]` lists.
pub fn read(refill: &toml::Value) -> Result<Vec<Bomb>> {
    let Some(list) = refill.get("bomb") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .context("`package.metadata.refill.bomb` is not an array of tables")?;
    list.iter()
        .map(|bomb| {
            let table = bomb.as_table().context("a bomb is not a table")?;
            if let Some(key) = table.keys().find(|k| {
                !["name", "instances", "tables", "elements", "memory_pages"].contains(&k.as_str())
            }) {
                bail!("unknown bomb key `{key}`");
            }
            let count = |key: &str| -> Result<u32> {
                match table.get(key) {
                    None => Ok(0),
                    Some(v) => v
                        .as_integer()
                        .and_then(|n| u32::try_from(n).ok())
                        .with_context(|| format!("bomb `{key}` is not a count")),
                }
            };
            Ok(Bomb {
                name: table
                    .get("name")
                    .and_then(toml::Value::as_str)
                    .context("a bomb has no `name`")?
                    .to_string(),
                instances: count("instances")?,
                tables: count("tables")?,
                elements: count("elements")?,
                memory_pages: count("memory_pages")?,
            })
        })
        .collect()
}

/// The core module each bomb instance is made of: its tables and memory,
/// and a start function that fills every table and writes to every page,
/// so that what it asked for is really resident.
fn module(bomb: &Bomb) -> Module {
    let mut types = TypeSection::new();
    types.ty().function([], []);
    let mut functions = FunctionSection::new();
    functions.function(0); // the function the tables point at
    functions.function(0); // the start function
    let mut tables = TableSection::new();
    for _ in 0..bomb.tables {
        tables.table(TableType {
            element_type: RefType::FUNCREF,
            table64: false,
            minimum: u64::from(bomb.elements),
            maximum: None,
            shared: false,
        });
    }
    let mut memories = wasm_encoder::MemorySection::new();
    if bomb.memory_pages > 0 {
        memories.memory(MemoryType {
            minimum: u64::from(bomb.memory_pages),
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
    }
    let mut elements = ElementSection::new();
    elements.declared(Elements::Functions([0].as_slice().into()));

    let mut code = CodeSection::new();
    let mut target = Function::new([]);
    target.instructions().end();
    code.function(&target);
    let mut start = Function::new([(1, ValType::I32)]);
    let mut body = start.instructions();
    for table in 0..bomb.tables {
        body.i32_const(0)
            .ref_func(0)
            .i32_const(bomb.elements.cast_signed())
            .table_fill(table);
    }
    if bomb.memory_pages > 0 {
        // for (i = 0; i < pages * 64 KiB; i += 4 KiB) memory[i] = 1
        let end = i64::from(bomb.memory_pages) * 65_536;
        let end = i32::try_from(end).unwrap_or(i32::MAX);
        let byte = MemArg {
            offset: 0,
            align: 0,
            memory_index: 0,
        };
        body.block(wasm_encoder::BlockType::Empty)
            .loop_(wasm_encoder::BlockType::Empty)
            .local_get(0)
            .i32_const(end)
            .i32_ge_u()
            .br_if(1)
            .local_get(0)
            .i32_const(1)
            .i32_store8(byte)
            .local_get(0)
            .i32_const(4096)
            .i32_add()
            .local_set(0)
            .br(0)
            .end()
            .end();
    }
    body.end();
    code.function(&start);

    let mut module = Module::new();
    module.section(&types).section(&functions).section(&tables);
    if bomb.memory_pages > 0 {
        module.section(&memories);
    }
    module
        .section(&StartSection { function_index: 1 })
        .section(&elements)
        .section(&code);
    module
}

/// `component` with the bomb module appended and instantiated.
pub fn arm(component: &[u8], bomb: &Bomb) -> Result<Vec<u8>> {
    const HEADER: usize = 8;
    if component.len() < HEADER || component[..4] != *b"\0asm" {
        bail!("not a component");
    }
    let mut out = Component::new();
    let mut modules = 0u32;
    let mut at = HEADER;
    while at < component.len() {
        let id = component[at];
        let (size, len) = leb128_u32(&component[at + 1..]).context("a malformed section size")?;
        let start = at + 1 + len;
        let end = start + size as usize;
        let data = component
            .get(start..end)
            .context("a section runs past the end")?;
        // Section 1 holds one core module; the bomb's index follows theirs.
        if id == 1 {
            modules += 1;
        }
        out.section(&RawSection { id, data });
        at = end;
    }
    out.section(&ModuleSection(&module(bomb)));
    let mut instances = InstanceSection::new();
    for _ in 0..bomb.instances {
        instances.instantiate(modules, Vec::<(&str, ModuleArg)>::new());
    }
    out.section(&instances);
    let bytes = out.finish();
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&bytes)
        .with_context(|| format!("the {} bomb does not validate", bomb.name))?;
    Ok(bytes)
}

/// An unsigned LEB128 number and the bytes it took.
fn leb128_u32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bomb_is_appended_to_a_component_and_validates() {
        let empty = Component::new().finish();
        let bomb = Bomb {
            name: "test".into(),
            instances: 3,
            tables: 2,
            elements: 10,
            memory_pages: 1,
        };
        let armed = arm(&empty, &bomb).expect("arms");
        let mut instances = 0;
        for payload in wasmparser::Parser::new(0).parse_all(&armed) {
            if let Ok(wasmparser::Payload::InstanceSection(reader)) = payload {
                instances += reader.count();
            }
        }
        assert_eq!(instances, 3);
    }

    #[test]
    fn bombs_are_read_from_the_crate_metadata() {
        let refill: toml::Value = toml::from_str(
            "component = true\n[[bomb]]\nname = \"b\"\ninstances = 2\ntables = 3\nelements = 4\n",
        )
        .expect("toml");
        let bombs = read(&refill).expect("reads");
        assert_eq!(
            bombs,
            vec![Bomb {
                name: "b".into(),
                instances: 2,
                tables: 3,
                elements: 4,
                memory_pages: 0
            }]
        );
        let wrong: toml::Value =
            toml::from_str("[[bomb]]\nname = \"b\"\nsize = 1\n").expect("toml");
        assert!(read(&wrong).is_err());
    }
}
