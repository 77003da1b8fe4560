//! Embeds every file of `rules/` in the library: the list of built-in rules is
//! the folder itself, so a new rule file cannot be left out of the binary.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the rules folder is readable")
        .map(|entry| entry.expect("a rules folder entry is readable").file_name())
        .map(|name| name.into_string().expect("rule file names are UTF-8"))
        .filter(|name| name.ends_with(".toml"))
        .collect();
    // Sorted, so that the binary does not depend on the file system's order.
    names.sort();
    let mut out = String::from("&[\n");
    for name in &names {
        let path = dir.join(name);
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String cannot fail");
    }
    out.push(']');
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_rules.rs");
    std::fs::write(target, out).expect("OUT_DIR is writable");
}
