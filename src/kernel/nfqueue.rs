//! TODO(owner): see src/kernel/mod.rs
