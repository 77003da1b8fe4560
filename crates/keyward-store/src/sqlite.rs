//! SQLite backend (the embedded default). To be written.
