//! The rules shipped with keyward, one TOML file per provider, embedded.
//!
//! The list is made by the crate's build script from the `rules/` folder
//! (sorted by file name), so every file there is shipped and nothing else is.

/// `(file name, contents)` of every builtin rules file.
pub const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_in_the_rules_folder_is_shipped() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let shipped: Vec<&str> = super::FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(shipped, on_disk);
        assert!(super::FILES.iter().all(|(_, text)| !text.is_empty()));
    }
}
