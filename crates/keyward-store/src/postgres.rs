//! PostgreSQL backend. To be written.
