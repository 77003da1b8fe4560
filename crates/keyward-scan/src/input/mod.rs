//! Where bytes come from: the file system ([`fs`]), git history and the index
//! ([`git`]), and archives found in any of them ([`archive`]). Standard input
//! and other readers go through [`crate::Scanner::scan_reader`].

pub mod archive;
pub mod fs;
pub mod git;
